//! `qiaomen` — the phone library for Android (Kotlin) and iOS (Swift) apps, over UniFFI.
//!
//! Thin by design: [`Phone`] wraps a `qiaomen_client_core::Store` and `SyncClient`; each
//! method converts its arguments, calls client-core, and converts the result. Any rule about
//! households, visits or sync lives in client-core or the protocol crate, not here.
//!
//! Threads: every method except `sync` is a short SQLite transaction (a few ms) — call them
//! off the UI thread (a background dispatcher / queue). `sync` is `async` (a Kotlin `suspend`
//! function, a Swift `async` function, a Python coroutine) running on a tokio runtime the
//! library owns; cancelling the caller's coroutine/task cancels the sync, and whatever the
//! server acknowledged before stays acknowledged.

mod error;
mod records;

use std::sync::Arc;

pub use error::QiaomenError;
use error::parse;
use qiaomen_client_core::{self as core, Store, StoreOptions, SyncClient};
use qiaomen_protocol::{
    conflicts::Resolution,
    ids::{HouseholdId, MemberId},
};
pub use records::*;

uniffi::setup_scaffolding!("qiaomen");

type Result<T> = std::result::Result<T, QiaomenError>;

/// Receives sync progress, after each round trip.
#[uniffi::export(with_foreign)]
pub trait SyncListener: Send + Sync {
    fn on_progress(&self, progress: SyncProgress);
}

/// One phone: its store of households and its connection to a server.
#[derive(uniffi::Object)]
pub struct Phone {
    /// Taken for one call, or one short step of a sync: never across the network, so the
    /// app records and reads while a sync waits on a slow link.
    store: std::sync::Mutex<Store>,
    /// One sync at a time; a second waits for the first.
    syncing: tokio::sync::Mutex<()>,
    /// With the retry policy and piece size the app set (`set_sync_policy`).
    client: std::sync::Mutex<SyncClient>,
    /// The app's name and version, as the app said (`set_app`), for the requests' agent.
    app: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phone").finish_non_exhaustive()
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Phone {
    /// Opens the store at `path`, enrolled earlier with [`enroll`]. A store that is not
    /// enrolled gives `Unauthorized`.
    ///
    /// `key`: the 32 bytes the store is encrypted with (kept in the platform's keystore; see
    /// ffi/README.md). A plaintext store opened with a key is encrypted now, once. A key that
    /// does not open the store gives `WrongKey` and leaves the file as it was; a key that is
    /// not 32 bytes gives `InvalidInput`.
    #[uniffi::constructor(default(key = None))]
    pub fn open(path: String, key: Option<Vec<u8>>) -> Result<Arc<Self>> {
        let store = Store::open_enrolled(path, store_options(key)?)?;
        Self::wrap(store)
    }

    /// The enrolled user's id.
    pub fn user_id(&self) -> String {
        self.store().author().user.to_string()
    }

    /// This device's id, as the server enrolled it.
    pub fn device_id(&self) -> String {
        self.store().author().device.to_string()
    }

    /// The grids this user may work in, as the server said at the last sync (empty before the
    /// first sync).
    pub fn grids(&self) -> Result<Vec<String>> {
        Ok(self.store().sync_scope()?.unwrap_or_default())
    }

    /// Registers a household; returns its id.
    pub fn create_household(&self, household: NewHousehold) -> Result<String> {
        Ok(self
            .store()
            .create_household(&household.into_record()?)?
            .to_string())
    }

    /// Adds a member to a household; returns the member's id.
    pub fn add_member(&self, household_id: String, member: NewMember) -> Result<String> {
        let member = member.into_record()?;
        let id = member.id;
        self.store()
            .edit_household(parse("household id", &household_id)?, |h| {
                h.members.insert(id, member);
                Ok(())
            })?;
        Ok(id.to_string())
    }

    /// Changes the household's own facts; fields left `None` stay as they are.
    pub fn update_household(&self, household_id: String, update: HouseholdUpdate) -> Result<()> {
        let id: HouseholdId = parse("household id", &household_id)?;
        self.store().edit_household(id, |h| update.apply(h))?;
        Ok(())
    }

    /// The household's current merged record (ID-card and phone numbers masked).
    pub fn household(&self, household_id: String) -> Result<HouseholdRecord> {
        Ok(self
            .store()
            .household(parse("household id", &household_id)?)?
            .into())
    }

    /// Records a visit and the demands raised on it; returns the visit's id.
    pub fn record_visit(&self, household_id: String, visit: NewVisit) -> Result<String> {
        let mut store = self.store();
        let (visit, demands) = visit.into_records(store.author())?;
        store.record_visit(parse("household id", &household_id)?, &visit, &demands)?;
        Ok(visit.id.to_string())
    }

    /// The roster of `grid` for a visit day (`YYYY-MM-DD`): key-group households first.
    pub fn roster(&self, grid: String, visit_day: String) -> Result<Vec<RosterItem>> {
        let store = self.store();
        Ok(store
            .roster(&grid.into_grid(), parse("date", &visit_day)?)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The visit-day coverage of `grid` for the cycle containing `day` (`YYYY-MM-DD`), as of
    /// today: every due household with its status, the reason it was not met and its
    /// catch-up deadline, key-group households first, then those still to visit. The same
    /// rule as the supervisors' report; works offline.
    pub fn coverage(&self, grid: String, day: String) -> Result<Vec<CoverageItem>> {
        let store = self.store();
        let today = store.today();
        let (_, policy) = store.workflow()?;
        Ok(store
            .coverage(&grid.into_grid(), parse("date", &day)?, today, &policy)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The weekly task lists of the phone's grids as of the last sync, with what is done (as
    /// the server stored it, and this phone's reports not sent yet). Works offline.
    pub fn task_lists(&self) -> Result<Vec<TaskListRecord>> {
        let store = self.store();
        let lists = store.task_lists()?;
        Ok(lists
            .into_iter()
            .map(|l| TaskListRecord::new(l, |hash| store.photo_state(hash)))
            .collect::<core::Result<_>>()?)
    }

    /// Marks task `item` (from 0) of list `list_id` done in `grid`, with `evidence`, offline;
    /// it is sent at the next sync. `InvalidInput` for a task the phone does not hold.
    pub fn complete_task(
        &self,
        list_id: String,
        item: u32,
        grid: String,
        evidence: String,
    ) -> Result<()> {
        Ok(self
            .store()
            .complete_task(&list_id, item, &grid, &evidence)?)
    }

    /// [`Phone::complete_task`] with photos (a 防诈 poster put up): the report and its photos
    /// are kept together, offline; the photos are sent after the report (SYNC-v1 §14.3).
    /// `InvalidInput` before anything is kept, by the server's rules: `task_evidence`:
    /// `too_long`; `photo`: `media_type`, `empty`, `too_large` (one photo, or all of them
    /// together), `too_many`; `photo_caption`: `too_long`; a task the phone does not hold,
    /// or one reported already.
    pub fn complete_task_with_photos(
        &self,
        list_id: String,
        item: u32,
        grid: String,
        evidence: String,
        photos: Vec<NewTaskPhoto>,
    ) -> Result<()> {
        let photos: Vec<core::NewPhoto> = photos
            .into_iter()
            .map(|p| core::NewPhoto {
                bytes: p.bytes,
                caption: p.caption,
                taken_at_ms: p.taken_at_ms,
            })
            .collect();
        Ok(self
            .store()
            .complete_task_with_photos(&list_id, item, &grid, &evidence, &photos)?)
    }

    /// The bytes of a photo this phone holds (taken here, or fetched); `NotFound` otherwise.
    /// A task report's photos taken on this phone are read with it.
    pub fn held_photo_bytes(&self, hash: String) -> Result<Vec<u8>> {
        self.store()
            .photo_bytes(&hash)?
            .ok_or_else(|| QiaomenError::NotFound {
                reason: "this phone holds no such photo".into(),
            })
    }

    /// Households of `grid` not yet visited in the cycle containing `today` (`YYYY-MM-DD`).
    pub fn not_visited(&self, grid: String, today: String) -> Result<Vec<RosterItem>> {
        let store = self.store();
        Ok(store
            .not_visited(&grid.into_grid(), parse("date", &today)?)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Fields of the household holding concurrent values, each with who wrote it and when.
    pub fn conflicts(&self, household_id: String) -> Result<Vec<ConflictRecord>> {
        let conflicts = self
            .store()
            .conflicts(parse("household id", &household_id)?)?;
        Ok(conflicts.into_iter().map(Into::into).collect())
    }

    /// Settles a conflict by keeping the value written by operation `op` (a `ConflictValue.op`).
    pub fn resolve_conflict(
        &self,
        household_id: String,
        path: Vec<String>,
        op: String,
    ) -> Result<()> {
        let id = parse("household id", &household_id)?;
        Ok(self
            .store()
            .resolve_conflict(id, &path, Resolution::Choose(op))?)
    }

    /// Takes a step of a demand's work order on the phone — typically the feedback to the
    /// resident and the return visit, offline; it syncs like any edit, and the server
    /// refuses it (`stale_order`) if the order moved on meanwhile. `InvalidInput` when the
    /// step does not follow from the order's state or lacks its data; `NotAllowed`
    /// (`what` = `demand_step`) when the user's role may not take it (closing is a
    /// supervisor's, dispatching a dispatcher's), as the server would refuse it.
    pub fn demand_step(
        &self,
        household_id: String,
        demand_id: String,
        step: DemandStepInput,
    ) -> Result<()> {
        let new = qiaomen_protocol::workorder::NewStep {
            satisfaction: step.satisfaction,
            ..qiaomen_protocol::workorder::NewStep::new(step.action, &step.comment)
        };
        Ok(self.store().demand_step(
            parse("household id", &household_id)?,
            parse("demand id", &demand_id)?,
            &new,
        )?)
    }

    /// Raises a tracked dispute or hazard on a household, offline; refused at once (nothing
    /// stored) by the server's own rules: `InvalidInput` for an empty or too long detail or a
    /// visit line the household does not hold, `NotAllowed` (`what` = `cases`) for a user who
    /// may not raise one in the grid.
    pub fn raise_case(&self, household_id: String, new_case: NewCaseInput) -> Result<CaseItem> {
        let id = parse("household id", &household_id)?;
        let raised = self.store().raise_case(id, &new_case.into_core()?)?;
        Ok(CaseItem::of(id, raised))
    }

    /// Takes a step of a case, offline; refused at once when it does not follow from the
    /// case's state or lacks its data, or is not the user's to take (`NotAllowed`, `what` =
    /// `case_step`: checking is a supervisor's), as the server would refuse it. An escalation
    /// writes its work order's demand in the same change.
    pub fn case_step(
        &self,
        household_id: String,
        case_id: String,
        step: CaseStepInput,
    ) -> Result<()> {
        let action = step.action;
        Ok(self.store().case_step(
            parse("household id", &household_id)?,
            parse("case id", &case_id)?,
            action,
            &step.into_core()?,
        )?)
    }

    /// The tracked cases of a household, open or not, oldest first. Works offline.
    pub fn cases(&self, household_id: String) -> Result<Vec<CaseItem>> {
        let id = parse("household id", &household_id)?;
        Ok(self
            .store()
            .cases(id)?
            .into_iter()
            .map(|c| CaseItem::of(id, c))
            .collect())
    }

    /// Records an event (事件) of `grid`, offline; it goes with the next sync. Refused at once
    /// (nothing kept) by the server's own rules: `InvalidInput` for an empty or too long
    /// detail or place, a day after today, a position off the Earth; `NotAllowed` (`what` =
    /// `journal`) for a grid the user does not hold.
    pub fn record_event(&self, event: NewEventInput) -> Result<JournalItem> {
        self.record_journal(event.into_core()?)
    }

    /// Records a day's work log (工作日志) of `grid`, offline, refused as `record_event` is.
    pub fn record_work_log(&self, log: NewWorkLogInput) -> Result<JournalItem> {
        self.record_journal(log.into_core())
    }

    /// The events and work logs this phone wrote, newest first, each pending, stored or
    /// refused with the server's reason. Works offline.
    pub fn journal(&self) -> Result<Vec<JournalItem>> {
        Ok(self
            .store()
            .journal()?
            .into_iter()
            .map(JournalItem::from)
            .collect())
    }

    /// The open cases of `grid` to look at again on the next visit, those past or nearest
    /// their deadline first. Works offline.
    pub fn follow_ups(&self, grid: String) -> Result<Vec<FollowUpItem>> {
        Ok(self
            .store()
            .follow_ups(&grid.into_grid())?
            .into_iter()
            .map(|f| FollowUpItem {
                door_number: f.door_number,
                case_item: CaseItem::of(f.household, f.case),
            })
            .collect())
    }

    /// The open work orders of `grid`: those waiting for the grid worker (feedback to the
    /// resident, return visit) first, then by due day. Works offline.
    pub fn work_orders(&self, grid: String) -> Result<Vec<WorkOrderItem>> {
        Ok(self
            .store()
            .work_orders(&grid.into_grid())?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Replaces a visit's note: how a worker fixes a visit returned by a supervisor.
    pub fn update_visit_note(
        &self,
        household_id: String,
        visit_id: String,
        note: String,
    ) -> Result<()> {
        Ok(self.store().replace_note(
            parse("household id", &household_id)?,
            parse("visit id", &visit_id)?,
            &note,
        )?)
    }

    /// Visits a supervisor returned for a fix and not fixed yet; a task goes away once its
    /// visit is changed (e.g. `update_visit_note`) or reviewed again.
    pub fn fix_tasks(&self) -> Result<Vec<FixTask>> {
        Ok(self
            .store()
            .fix_tasks()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Changes a server refused, with the reason (a code and words in Chinese) and what each
    /// held (the visits, demands, members and fields typed), for the worker to see and enter
    /// again. Kept until [`Phone::clear_rejected`], also when the household leaves the phone.
    pub fn rejected_changes(&self) -> Result<Vec<RejectedChange>> {
        Ok(self
            .store()
            .rejected_changes()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Forgets a refusal the worker has seen. Returns whether there was one.
    pub fn clear_rejected(&self, household_id: String, change_hash: String) -> Result<bool> {
        let household: HouseholdId = parse("household id", &household_id)?;
        let hash: qiaomen_protocol::ChangeHash = parse("change hash", &change_hash)?;
        Ok(self.store().clear_rejected(household, hash)?)
    }

    /// Attaches a photo to a record of the household (a visit, one of its hazards or
    /// disputes, a work-order step, the household itself) and returns it. `bytes`: a JPEG,
    /// PNG or WebP image of at most 2 MiB — compress it first (ffi/README.md). Kept on the
    /// phone, encrypted with the store; sent after its record at the next sync. Refused with
    /// `InvalidInput` (`invalid_field` = `photo`: `too_large`, `media_type`, `empty`,
    /// `too_many`; `photo_caption`: `too_long`) before anything is stored.
    pub fn attach_photo(
        &self,
        household_id: String,
        subject: PhotoSubject,
        bytes: Vec<u8>,
        caption: String,
        taken_at_ms: i64,
    ) -> Result<PhotoRecord> {
        let id: HouseholdId = parse("household id", &household_id)?;
        let subject = subject.into_subject()?;
        let mut store = self.store();
        let photo = store.attach_photo(id, subject, &bytes, &caption, taken_at_ms)?;
        let state = store.photo_state(&photo.hash)?;
        Ok(PhotoRecord::new(photo, state))
    }

    /// [`Phone::attach_photo`] with the photo read from the file at `path` (the camera's
    /// output, already compressed). A file over the size cap is refused without being read
    /// whole.
    pub fn attach_photo_file(
        &self,
        household_id: String,
        subject: PhotoSubject,
        path: String,
        caption: String,
        taken_at_ms: i64,
    ) -> Result<PhotoRecord> {
        use std::io::Read;
        let cap = qiaomen_protocol::photo::MAX_PHOTO_BYTES;
        let file = std::fs::File::open(&path)
            .map_err(|_| QiaomenError::invalid("the photo file cannot be read".into()))?;
        let mut bytes = Vec::new();
        file.take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(|_| QiaomenError::invalid("the photo file cannot be read".into()))?;
        self.attach_photo(household_id, subject, bytes, caption, taken_at_ms)
    }

    /// The photos attached to the household's records, with where each one's bytes are.
    pub fn photos(&self, household_id: String) -> Result<Vec<PhotoRecord>> {
        let id: HouseholdId = parse("household id", &household_id)?;
        let mut store = self.store();
        let photos = store.photos(id)?;
        photos
            .into_iter()
            .map(|p| {
                let state = store.photo_state(&p.hash)?;
                Ok(PhotoRecord::new(p, state))
            })
            .collect()
    }

    /// A photo's bytes: from the phone, or fetched from the server when this phone does not
    /// hold them (only when asked; a phone never downloads its grid's photos by itself).
    /// `NotFound` when the server has no such photo of a household this phone may read.
    pub async fn photo_bytes(&self, household_id: String, hash: String) -> Result<Vec<u8>> {
        let id: HouseholdId = parse("household id", &household_id)?;
        Ok(self.client().fetch_photo(&self.store, id, &hash).await?)
    }

    /// Photos taken here that no server holds yet.
    pub fn pending_photo_count(&self) -> Result<u64> {
        Ok(self.store().pending_photo_count()?)
    }

    /// Changes made here that no server has acknowledged yet.
    pub fn pending_count(&self) -> Result<u64> {
        Ok(self.store().pending_change_count()?)
    }

    /// Changes made here that servers have acknowledged as durably stored (over the store's
    /// life).
    pub fn acknowledged_count(&self) -> Result<u64> {
        Ok(self.store().acknowledged_change_count()?)
    }

    /// Every household id on this phone.
    pub fn household_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .store()
            .household_ids()?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    /// Names the app and its version (`gridapp/2.3.1`): the supervisors' list of phones shows
    /// it beside this library's version after the next sync. At most 64 bytes are sent.
    pub fn set_app(&self, app: String) {
        if let Ok(mut a) = self.app.lock() {
            *a = Some(app);
        }
    }

    /// Trusts `pem` (the county's CA certificate) for the server's certificate from the next
    /// sync on, and keeps it with the credentials (a county that moved its server to its own
    /// CA). `InvalidInput` if it is not a PEM certificate; then nothing changes.
    pub fn set_trusted_ca(&self, pem: String) -> Result<()> {
        let client = self.client().with_trusted_ca(&pem)?;
        let store = self.store();
        let mut credentials = store
            .credentials()?
            .ok_or(qiaomen_client_core::StoreError::NotEnrolled)?;
        credentials.trusted_ca_pem = Some(pem);
        store.set_credentials(&credentials)?;
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        Ok(())
    }

    /// How syncs treat a weak link (the defaults suit 2G: see `SyncPolicy`). Takes effect
    /// from the next sync. Values out of range are brought within it.
    pub fn set_sync_policy(&self, policy: SyncPolicy) {
        let retry = qiaomen_client_core::Retry {
            attempts: policy.attempts.clamp(1, 20),
            stall: seconds(policy.stall_seconds, 5.0, 300.0),
            give_up_after: seconds(policy.give_up_after_seconds, 5.0, 3600.0),
            ..Default::default()
        };
        let piece = (policy.upload_piece_bytes as usize).clamp(4 * 1024, 512 * 1024);
        let mut client = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *client = client.clone().with_retry(retry).with_chunk_bytes(piece);
    }

    /// Syncs with the server: sends what it has not acknowledged, receives what this phone
    /// lacks. One round trip for a phone that synced before.
    pub async fn sync(&self, listener: Option<Arc<dyn SyncListener>>) -> Result<SyncSummary> {
        let app = self.app.lock().map(|a| a.clone()).unwrap_or(None);
        let client = match app {
            Some(app) => self.client().with_app(&app),
            None => self.client(),
        };
        let _one_at_a_time = self.syncing.lock().await;
        let report = client
            .sync_shared(&self.store, |p| {
                if let Some(l) = &listener {
                    l.on_progress(p.clone().into());
                }
            })
            .await?;
        Ok(report.into())
    }
}

fn seconds(s: f64, min: f64, max: f64) -> std::time::Duration {
    let s = if s.is_finite() {
        s.clamp(min, max)
    } else {
        min
    };
    std::time::Duration::from_secs_f64(s)
}

impl Phone {
    fn record_journal(&self, new: qiaomen_client_core::store::NewJournal) -> Result<JournalItem> {
        let entry = self.store().record_journal(&new)?;
        Ok(JournalItem::from(qiaomen_client_core::store::JournalLine {
            entry,
            state: "pending".into(),
            code: None,
        }))
    }

    fn client(&self) -> SyncClient {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The store, for one call, as a sync's steps take it (taken over after a panic).
    fn store(&self) -> impl std::ops::DerefMut<Target = Store> + '_ {
        qiaomen_client_core::StoreAccess::store(&self.store)
    }

    fn wrap(store: Store) -> Result<Arc<Self>> {
        let credentials = store
            .credentials()?
            .ok_or(qiaomen_client_core::StoreError::NotEnrolled)?;
        let client = SyncClient::for_credentials(&credentials)?;
        Ok(Arc::new(Phone {
            store: std::sync::Mutex::new(store),
            syncing: tokio::sync::Mutex::new(()),
            client: std::sync::Mutex::new(client),
            app: std::sync::Mutex::new(None),
        }))
    }
}

/// Enrolls this phone with the server at `server_url` using the one-time `code` an admin gave
/// the worker, creating the store at `path`. Safe to retry after a network failure.
/// With a `key` (32 bytes from the platform's keystore) the store is encrypted from its first
/// byte; open it later with the same key ([`Phone::open`]).
#[uniffi::export(async_runtime = "tokio", default(key = None))]
pub async fn enroll(
    path: String,
    server_url: String,
    code: String,
    key: Option<Vec<u8>>,
) -> Result<Arc<Phone>> {
    let store = qiaomen_client_core::enroll(&path, &server_url, &code, store_options(key)?).await?;
    Phone::wrap(store)
}

/// The store's options with the app's key, if it gave one.
fn store_options(key: Option<Vec<u8>>) -> Result<StoreOptions> {
    let key = key
        .map(|k| qiaomen_client_core::StoreKey::new(&zeroize::Zeroizing::new(k)))
        .transpose()?;
    Ok(StoreOptions {
        key,
        ..StoreOptions::default()
    })
}

/// [`enroll`] with a server whose certificate is signed by the county's own CA:
/// `trusted_ca_pem` is that CA's certificate (PEM). It is kept with the phone's credentials
/// and trusted, beside the system's roots, by every later sync. `InvalidInput` if it is not a
/// PEM certificate.
#[uniffi::export(async_runtime = "tokio", default(key = None))]
pub async fn enroll_with_ca(
    path: String,
    server_url: String,
    code: String,
    trusted_ca_pem: String,
    key: Option<Vec<u8>>,
) -> Result<Arc<Phone>> {
    let store = qiaomen_client_core::enroll_trusting(
        &path,
        &server_url,
        &code,
        store_options(key)?,
        Some(&trusted_ca_pem),
    )
    .await?;
    Phone::wrap(store)
}

/// A new member id, for apps that build records themselves.
#[uniffi::export]
pub fn new_member_id() -> String {
    MemberId::new().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qiaomen_protocol::{
        doc::Author,
        ids::{DeviceId, UserId},
    };

    #[test]
    fn a_note_in_chinese_is_replaced_through_the_ffi() {
        let dir = tempfile::tempdir().unwrap();
        let author = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let store = Store::open(dir.path().join("p.db"), author, StoreOptions::default()).unwrap();
        store
            .set_credentials(&qiaomen_client_core::Credentials {
                server_url: "http://127.0.0.1:9".into(),
                user: author.user,
                device: author.device,
                token: "qm_d_x".into(),
                trusted_ca_pem: None,
            })
            .unwrap();
        let phone = Phone::wrap(store).unwrap();
        let hid = phone
            .create_household(NewHousehold {
                grid: "g".into(),
                address: "东村三组".into(),
                door_number: "17".into(),
                phone: Some("13812345678".into()),
                gps: None,
                tags: vec![],
            })
            .unwrap();
        let visit = phone
            .record_visit(
                hid.clone(),
                NewVisit {
                    visit_day: "2026-11-15".into(),
                    started_at_ms: 1,
                    ended_at_ms: None,
                    gps: None,
                    outcome: qiaomen_protocol::schema::VisitOutcome::Met,
                    people_met: vec![],
                    needs: vec![],
                    disputes: vec![],
                    hazards: vec![],
                    publicity: vec![],
                    note: "第一次走访".into(),
                    demands: vec![],
                },
            )
            .unwrap();
        phone
            .update_visit_note(hid.clone(), visit.clone(), "x".into())
            .unwrap();

        phone
            .update_visit_note(hid.clone(), visit.clone(), "第一次走访：已按时服药".into())
            .unwrap();
        let h = phone.household(hid.clone()).unwrap();
        assert_eq!(h.visits[0].note, "第一次走访：已按时服药");
        // A note over the limit: refused at once, naming the field; nothing is stored.
        let pending = phone.pending_count().unwrap();
        let err = phone
            .update_visit_note(hid.clone(), visit, "字".repeat(10 * 1024 * 1024))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                QiaomenError::InvalidInput { invalid_field: Some(f), rule: Some(r), .. }
                    if f == "note" && r == "too_long"
            ),
            "{err:?}"
        );
        assert_eq!(phone.pending_count().unwrap(), pending);
        assert_eq!(
            phone.household(hid).unwrap().visits[0].note,
            "第一次走访：已按时服药"
        );
    }
}
