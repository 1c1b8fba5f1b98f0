//! The write path: every upload goes through one writer thread, which checks each change,
//! applies the accepted ones to the cached household documents and appends them to the log.
//! Many concurrent requests are **group-committed**: the writer takes every upload waiting in
//! its queue, processes them in one transaction and fsyncs once, then answers each. An upload
//! is acknowledged only after that commit returns.
//!
//! **A broken household fails only itself.** A change is checked against Automerge's own rules
//! within its household ([`qiaomen_protocol::integrity`]) before it is applied, and applied it
//! must give itself back byte for byte, so a stored change never makes its household
//! unloadable. A household whose stored document still does not load (or whose processing
//! panics) is quarantined: its changes are refused `quarantined` and every other household and
//! request of the group is committed as usual. Only a failing store fails a whole group.
//!
//! **Bounded cost.** Changes are parsed (and packed ones expanded) before they reach a writer,
//! on a blocking thread of the request: a request whose changes expand to more than
//! [`limits::MAX_REQUEST_OPS`] operations never reaches one. A change over
//! [`limits::MAX_CHANGE_OPS`], or one taking its household past [`limits::MAX_DOC_OPS`], is
//! refused `over_limit`. When a batch of changes fails, the culprits are found by bisection
//! (a copy of the document per halving, not one per change).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use automerge::{Change, ChangeHash};
use qiaomen_protocol::{
    doc::HouseholdDoc,
    ids::HouseholdId,
    integrity::Lineage,
    pack,
    wire::{DocChanges, RejectCode, Rejection, limits},
};
use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use crate::{
    access::{
        org::Role,
        policy::{self, Principal},
    },
    storage::{
        DocHead, HouseholdWrite, NewChange, RefusedRow, Storage, StorageError, WriteBatch, Written,
    },
};

/// Whether the changes applied on top of `before` (empty for a new household) leave a valid
/// household that the principal may have made.
fn verdict<'a>(
    principal: Option<&Principal>,
    doc: &mut HouseholdDoc,
    before: &[ChangeHash],
    id: HouseholdId,
    changes: impl IntoIterator<Item = &'a Change>,
) -> Result<(), RejectCode> {
    let touched = doc
        .validate_since(before, id)
        .map_err(|e| e.reject_code())?;
    // Each change as its author made it: when, and on which version (its dependencies).
    // Reading the grid at a version costs a walk of the history, so it is read once for the
    // version the batch builds on, and a change built on another change of the batch saw what
    // that one saw when the batch does not touch the grid.
    let grid_untouched = !touched.facts.contains("grid");
    let grid_before = (!before.is_empty())
        .then(|| doc.root_text("grid", Some(before)))
        .flatten();
    let mut seen: HashMap<ChangeHash, Option<String>> = HashMap::new();
    let mut made: Vec<policy::Made> = Vec::new();
    for c in changes {
        let deps = c.deps();
        let seen_grid = if deps.is_empty() {
            None
        } else if deps == before {
            grid_before.clone()
        } else if grid_untouched
            && let Some(g) = seen.get(&deps[0])
            && deps.iter().all(|d| seen.get(d) == Some(g))
        {
            g.clone()
        } else {
            doc.root_text("grid", Some(deps))
        };
        seen.insert(c.hash(), seen_grid.clone());
        made.push(policy::Made {
            at_ms: c.timestamp(),
            seen_grid,
        });
    }
    check_visit_days(principal, doc, &touched, &made)?;
    let Some(p) = principal else {
        return Ok(());
    };
    policy::check_effect(p, doc, before, &touched, &made)
}

/// Every visit the changes wrote counts for a visit day that has come (by the server's
/// clock), of a cycle its worker held the grid in (when the uploader is its worker, not a
/// supervisor) and not of a cycle before the household was created (SYNC-v1 §13.8).
fn check_visit_days(
    principal: Option<&Principal>,
    doc: &mut HouseholdDoc,
    touched: &qiaomen_protocol::doc::Touched,
    made: &[policy::Made],
) -> Result<(), RejectCode> {
    use qiaomen_protocol::validate;
    let now = crate::access::now_ms();
    let grid = doc.grid();
    // The grids the changes were made in (a visit made before its household moved counts
    // for the grid it was made in).
    let grids: Vec<&str> = made
        .iter()
        .map(|m| m.seen_grid.as_deref().unwrap_or(grid.as_str()))
        .collect();
    // The household's registration (its creating change's own time), read only for a visit
    // older than the last cycle: reading it costs the household's history.
    let recent = qiaomen_protocol::calendar::cycle_of(
        qiaomen_protocol::calendar::cycle_of(qiaomen_protocol::workorder::day_of(now)).add_days(-1),
    );
    let mut registered: Option<Option<qiaomen_protocol::calendar::Day>> = None;
    for (_, key) in touched.entries.iter().filter(|(c, _)| c == "visits") {
        // Two scalars, not the whole visit: validation read it through its type already.
        let Some(visit_day) = doc.visit_day_of(key) else {
            continue; // deleted, or refused by validation already
        };
        let worker = doc.visit_worker(key, None);
        validate::visit_day(visit_day, now).map_err(|_| RejectCode::InvalidField)?;
        if visit_day < recent {
            let created = *registered
                .get_or_insert_with(|| doc.created_ms().map(qiaomen_protocol::workorder::day_of));
            if let Some(r) = created {
                validate::visit_day_registered(visit_day, r)
                    .map_err(|_| RejectCode::InvalidField)?;
            }
        }
        // Before the worker held the grid: the uploader's own visits (a supervisor may
        // enter one for a worker).
        if let Some(p) = principal
            && worker == Some(p.user)
            && !p.scope.roles.iter().any(|r| r.is_supervisor())
            && !grids.iter().any(|g| p.scope.held_for_cycle(g, visit_day))
        {
            return Err(RejectCode::InvalidField);
        }
    }
    Ok(())
}

/// Applies `batch` to `doc` and checks the result: each change gives itself back byte for
/// byte (what a saved document verifies when it loads) and the household is valid and the
/// principal's to make. On an error `doc` holds part of the batch: the caller throws it away.
fn apply_checked(
    principal: Option<&Principal>,
    doc: &mut HouseholdDoc,
    id: HouseholdId,
    batch: &[(usize, Change)],
) -> Result<(), RejectCode> {
    let before = doc.heads();
    doc.apply_decoded(batch.iter().map(|(_, c)| c.clone()).collect())
        .map_err(|_| RejectCode::BrokenHistory)?;
    for (_, c) in batch {
        doc.round_trips(c).map_err(|_| RejectCode::BrokenHistory)?;
    }
    verdict(principal, doc, &before, id, batch.iter().map(|(_, c)| c))
}

/// One request's uploads.
#[derive(Debug)]
pub struct Upload {
    /// The authenticated device and its rights; `None` only for tools that load trusted data
    /// (benchmarks, tests of the write path), which skip the access rules.
    pub principal: Option<Arc<Principal>>,
    pub docs: Vec<DocChanges>,
    /// The request's table and base time, for its packed changes (`None`: no packed change).
    pub packing: Option<Arc<Packing>>,
}

/// What a request's packed changes refer to ([`qiaomen_protocol::pack`]).
#[derive(Debug, Default)]
pub struct Packing {
    pub table: Vec<ByteBuf>,
    pub base_ms: i64,
}

/// What became of an upload.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub accepted: u32,
    pub rejected: Vec<Rejection>,
    /// Hashes of every uploaded change that decoded (accepted, duplicate or refused): the
    /// phone has them, so the response does not send them back.
    pub uploaded: Vec<ChangeHash>,
}

/// A change of an upload as parsed before it reaches a writer.
#[derive(Debug, Clone)]
enum Incoming {
    Raw(Box<Change>),
    /// Expanded, waiting for its dependencies to be resolved against the household.
    Packed(Box<pack::Unpacked>),
    /// Refused on sight (not a change, too large, a packed change that does not read).
    Refused(RejectCode),
}

#[derive(Debug, Clone)]
struct ParsedDoc {
    id: HouseholdId,
    changes: Vec<Incoming>,
}

/// An upload parsed: what a writer works on.
#[derive(Debug, Clone)]
struct Parsed {
    principal: Option<Arc<Principal>>,
    docs: Vec<ParsedDoc>,
}

/// Parses every change of an upload (and expands the packed ones), counting operations.
fn parse(upload: &Upload) -> Result<Parsed, WriteFailed> {
    let empty = Packing::default();
    let packing = upload.packing.as_deref().unwrap_or(&empty);
    let mut ops = 0usize;
    let mut docs = Vec::with_capacity(upload.docs.len());
    for dc in &upload.docs {
        let mut changes = Vec::with_capacity(dc.changes.len());
        for bytes in &dc.changes {
            let incoming = if bytes.len() > limits::MAX_CHANGE_BYTES {
                Incoming::Refused(RejectCode::Malformed)
            } else if bytes.first() == Some(&pack::PACKED_FORMAT) {
                match pack::unpack(bytes, &packing.table, packing.base_ms) {
                    Ok(u) => {
                        ops += u.op_count();
                        Incoming::Packed(Box::new(u))
                    }
                    Err(pack::PackError::TooLarge) => Incoming::Refused(RejectCode::OverLimit),
                    Err(_) => Incoming::Refused(RejectCode::SendRaw),
                }
            } else {
                match qiaomen_protocol::doc::decode_changes([bytes.as_slice()]) {
                    Ok(mut c) => {
                        let change = c.remove(0);
                        if change.len() > limits::MAX_CHANGE_OPS {
                            Incoming::Refused(RejectCode::OverLimit)
                        } else {
                            ops += change.len();
                            Incoming::Raw(Box::new(change))
                        }
                    }
                    Err(_) => Incoming::Refused(RejectCode::Malformed),
                }
            };
            if ops > limits::MAX_REQUEST_OPS {
                return Err(WriteFailed::TooManyOps);
            }
            changes.push(incoming);
        }
        docs.push(ParsedDoc { id: dc.id, changes });
    }
    Ok(Parsed {
        principal: upload.principal.clone(),
        docs,
    })
}

struct Job {
    upload: Parsed,
    reply: oneshot::Sender<Result<Outcome, String>>,
}

/// Uploads waiting for one writer. A waiting request holds its parsed changes (bounded by
/// the request caps) and no thread.
const QUEUED_JOBS: usize = 1024;

/// How many times a group is checked again after households moved under it (another writer
/// appended to them) before its uploads are answered with an error to retry.
const MAX_ATTEMPTS: u32 = 4;

/// A handle to the writer threads.
#[derive(Debug, Clone)]
pub struct Writer {
    shards: Vec<tokio::sync::mpsc::Sender<Job>>,
}

/// Why an upload could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailed {
    /// The storage failed; the phone should retry.
    #[error("the server could not store the upload")]
    Storage,
    /// The request's changes expand to more operations than a request may cost.
    #[error(
        "the request's changes expand to more than {} operations",
        limits::MAX_REQUEST_OPS
    )]
    TooManyOps,
}

impl Writer {
    /// Starts one writer thread per storage connection. Households are sharded across them
    /// (a household always goes to the same thread, so its changes stay in order); each thread
    /// checks and applies in parallel and takes SQLite's write lock only to append and commit.
    pub fn start<S: Storage>(
        storages: Vec<S>,
        options: IngestOptions,
    ) -> (Writer, Vec<std::thread::JoinHandle<()>>) {
        let mut shards = Vec::new();
        let mut handles = Vec::new();
        for (i, storage) in storages.into_iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::channel::<Job>(QUEUED_JOBS);
            let options = options.clone();
            let handle = std::thread::Builder::new()
                .name(format!("qiaomen-writer-{i}"))
                .spawn(move || {
                    let groups = options.group_sizes.clone();
                    run_shard(Ingestor::new(storage, options), rx, groups)
                })
                .expect("spawn writer thread");
            shards.push(tx);
            handles.push(handle);
        }
        (Writer { shards }, handles)
    }

    /// Uploads waiting in the writers' queues now.
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .sum()
    }

    fn shard_of(&self, id: &HouseholdId) -> usize {
        // The id's last bytes are random in every UUID version phones make.
        let b = id.as_bytes();
        u16::from_le_bytes([b[14], b[15]]) as usize % self.shards.len()
    }

    /// Hands an upload to the writers and waits until it is durably stored (or refused). Its
    /// changes are parsed first, off the async threads and off the writers.
    pub async fn submit(&self, upload: Upload) -> Result<Outcome, WriteFailed> {
        let parsed = tokio::task::spawn_blocking(move || parse(&upload))
            .await
            .map_err(|_| WriteFailed::Storage)??;
        let mut parts: Vec<Vec<ParsedDoc>> = (0..self.shards.len()).map(|_| Vec::new()).collect();
        for doc in parsed.docs {
            let shard = self.shard_of(&doc.id);
            parts[shard].push(doc);
        }
        let mut waiting = Vec::new();
        for (shard, docs) in parts.into_iter().enumerate() {
            if docs.is_empty() {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            let tx = self.shards[shard].clone();
            let job = Job {
                upload: Parsed {
                    principal: parsed.principal.clone(),
                    docs,
                },
                reply,
            };
            // The queues are bounded: a request waits for room without holding a thread.
            tx.send(job).await.map_err(|_| WriteFailed::Storage)?;
            waiting.push(rx);
        }
        let mut outcome = Outcome::default();
        for rx in waiting {
            let part = rx
                .await
                .map_err(|_| WriteFailed::Storage)?
                .map_err(|_| WriteFailed::Storage)?;
            outcome.accepted += part.accepted;
            outcome.rejected.extend(part.rejected);
            outcome.uploaded.extend(part.uploaded);
        }
        Ok(outcome)
    }
}

fn run_shard<S: Storage>(
    mut ingestor: Ingestor<S>,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    group_sizes: Option<prometheus_client::metrics::histogram::Histogram>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < 256 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if let Some(h) = &group_sizes {
            h.observe(jobs.len() as f64);
        }
        let (uploads, replies): (Vec<Parsed>, Vec<_>) =
            jobs.into_iter().map(|j| (j.upload, j.reply)).unzip();
        // A panic outside one household's processing (which is caught per household) must
        // not end the shard: drop what it held in memory, roll back, and answer the group
        // with errors; phones retry.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ingestor.process_parsed(uploads)
        }))
        .unwrap_or_else(|_| {
            ingestor.reset();
            Err(StorageError::Panicked)
        });
        match result {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, group = replies.len(), "write group failed; rolled back");
                for reply in replies {
                    let _ = reply.send(Err("storage".into()));
                }
            }
        }
    }
    tracing::info!("writer stopped");
}

/// Tuning of the write path.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Writer threads (households are sharded across them).
    pub writers: usize,
    /// Household documents kept in memory, per writer.
    pub cache_capacity: usize,
    /// Operations of the household documents kept in memory, per writer, all together: what
    /// a document costs in memory grows with its operations (a few bytes each for a run of
    /// typed text, more for scattered edits), so this bounds the cache whatever the size of
    /// its documents, where a count alone does not. A document larger than this alone is
    /// still loaded to be processed, then dropped first.
    pub cache_ops: u64,
    /// Write a new snapshot of a document after this many log rows past the old one.
    pub snapshot_after: u64,
    /// Where each group commit's number of uploads is recorded (the metrics), if anywhere.
    pub group_sizes: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            writers: 2,
            cache_capacity: 2_000,
            cache_ops: 1_000_000,
            snapshot_after: 32,
            group_sizes: None,
        }
    }
}

/// Accepted changes of one household, waiting for the group's commit.
struct Queued {
    id: HouseholdId,
    rows: Vec<NewChange>,
    /// The household's grid before these changes (`None`: they create it) and after.
    grid_before: Option<String>,
    grid_after: String,
}

struct Cached {
    doc: HouseholdDoc,
    /// The stored log `doc` was built from ends here (plus this group's accepted changes).
    head: DocHead,
    /// The per-actor state of `doc`'s history, for checking the next changes.
    lineage: Lineage,
    last_used: u64,
}

/// The writer's state: the storage and the hot documents.
pub struct Ingestor<S: Storage> {
    storage: S,
    options: IngestOptions,
    cache: HashMap<HouseholdId, Cached>,
    tick: u64,
    /// Accepted changes of the current group, appended when the group commits.
    pending: Vec<Queued>,
    /// Households touched by the current group: their cached documents hold changes that are
    /// not stored yet, so they must not be evicted before the commit.
    pinned: HashSet<HouseholdId>,
    /// Households of the current group whose cached document lacks a change the log holds
    /// (another server appended it): the group is checked again on documents read anew.
    stale: Vec<HouseholdId>,
    /// Refused changes of the current group that held what a person typed, kept in the
    /// group's transaction ([`Storage::keep_refused`]).
    refusals: Vec<RefusedRow>,
    /// The bytes of the household's changes being processed, for keeping refused ones.
    seen_bytes: HashMap<ChangeHash, Vec<u8>>,
    /// Each household of the current group: the last log row its checks were made against
    /// (0: not stored), which the commit checks is still its last ([`HouseholdWrite::head`]).
    heads: HashMap<HouseholdId, u64>,
}

fn reject(doc: HouseholdId, n: usize, hash: Option<ChangeHash>, code: RejectCode) -> Rejection {
    Rejection {
        doc,
        n: n as u32,
        hash: ByteBuf::from(hash.map(|h| h.as_ref().to_vec()).unwrap_or_default()),
        code,
    }
}

/// Refuses every change of a household's upload with `code` (those parsed with their hash).
fn reject_incoming(outcome: &mut Outcome, doc: &ParsedDoc, code: RejectCode) {
    for (n, inc) in doc.changes.iter().enumerate() {
        let hash = match inc {
            Incoming::Raw(c) => Some(c.hash()),
            _ => None,
        };
        outcome.rejected.push(reject(doc.id, n, hash, code));
    }
}

/// Whether the principal could ever write a household that has been in `grids`: a grant on
/// one of them (now or in the past: a change made before the household moved is judged by
/// the grid it was made in), or a team's work orders. Checked before the household is loaded.
fn may_touch(p: &Principal, grids: &[String]) -> bool {
    p.scope.roles.contains(&Role::TeamMember)
        || p.scope
            .rights
            .grants
            .iter()
            .any(|g| grids.contains(&g.grid))
}

impl<S: Storage> std::fmt::Debug for Ingestor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Ingestor<S> {
    pub fn new(storage: S, options: IngestOptions) -> Self {
        Self {
            storage,
            options,
            cache: HashMap::new(),
            tick: 0,
            pending: Vec::new(),
            pinned: HashSet::new(),
            stale: Vec::new(),
            refusals: Vec::new(),
            seen_bytes: HashMap::new(),
            heads: HashMap::new(),
        }
    }

    /// Forgets everything held in memory.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.pending.clear();
        self.pinned.clear();
        self.stale.clear();
        self.refusals.clear();
        self.heads.clear();
    }

    /// Processes uploads in one transaction (parsing them first, as [`Writer::submit`] does).
    /// On a storage error everything is rolled back, the cache is dropped (it may hold
    /// changes that are not stored) and the error returned. An upload over
    /// [`limits::MAX_REQUEST_OPS`] gets an outcome refusing all its changes `over_limit`.
    pub fn process_group(&mut self, uploads: &[&Upload]) -> Result<Vec<Outcome>, StorageError> {
        let mut parsed = Vec::with_capacity(uploads.len());
        let mut over = Vec::new();
        for (i, u) in uploads.iter().enumerate() {
            match parse(u) {
                Ok(p) => parsed.push(p),
                Err(_) => {
                    over.push(i);
                    parsed.push(Parsed {
                        principal: None,
                        docs: Vec::new(),
                    });
                }
            }
        }
        let mut outcomes = self.process_parsed(parsed)?;
        for i in over {
            for dc in &uploads[i].docs {
                for n in 0..dc.changes.len() {
                    outcomes[i]
                        .rejected
                        .push(reject(dc.id, n, None, RejectCode::OverLimit));
                }
            }
        }
        Ok(outcomes)
    }

    fn process_parsed(&mut self, mut uploads: Vec<Parsed>) -> Result<Vec<Outcome>, StorageError> {
        let started = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            // Checking consumes the uploads: a copy is kept for a retry (the parsed changes,
            // a small cost beside checking and applying them).
            let again = (attempt < MAX_ATTEMPTS).then(|| uploads.clone());
            let result = self.check_and_store(uploads, started);
            let touched = std::mem::take(&mut self.pinned);
            self.pending.clear();
            self.stale.clear();
            self.refusals.clear();
            self.heads.clear();
            match result {
                Ok(Ok(outcomes)) => return Ok(outcomes),
                Ok(Err(moved)) => {
                    // Another writer appended to these households since they were read: what
                    // this group made of them is stale. Re-read and re-check them all.
                    tracing::info!(
                        households = moved.len(),
                        attempt,
                        "households moved under the writer; checking again"
                    );
                    for id in touched.iter().chain(&moved) {
                        self.cache.remove(id);
                    }
                    match again {
                        Some(u) => uploads = u,
                        None => return Err(StorageError::Contended),
                    }
                    attempt += 1;
                }
                Err(e) => {
                    // The cache may hold changes that are not stored: start again from the disk.
                    self.cache.clear();
                    return Err(e);
                }
            }
        }
    }

    /// Checks and applies every upload without holding the write lock (reads only), then
    /// stores what was accepted in one commit; `Ok(Err(moved))` when households moved under
    /// it (nothing stored).
    #[allow(clippy::type_complexity)]
    fn check_and_store(
        &mut self,
        uploads: Vec<Parsed>,
        started: std::time::Instant,
    ) -> Result<Result<Vec<Outcome>, Vec<HouseholdId>>, StorageError> {
        let n_uploads = uploads.len();
        let mut outcomes = Vec::with_capacity(n_uploads);
        for upload in uploads {
            outcomes.push(self.process(upload)?);
        }
        if !self.stale.is_empty() {
            return Ok(Err(std::mem::take(&mut self.stale)));
        }
        let processed = started.elapsed();
        if self.pending.is_empty() && self.refusals.is_empty() {
            return Ok(Ok(outcomes));
        }
        let batch = self.batch();
        match self.storage.write(&batch)? {
            Written::Moved(ids) => return Ok(Err(ids)),
            Written::Committed(heads) => {
                for (id, head) in heads {
                    if let Some(c) = self.cache.get_mut(&id) {
                        c.head = head;
                    }
                }
            }
        }
        tracing::debug!(
            uploads = n_uploads,
            accepted = outcomes.iter().map(|o| o.accepted).sum::<u32>(),
            process_us = processed.as_micros() as u64,
            commit_us = (started.elapsed() - processed).as_micros() as u64,
            "group committed"
        );
        Ok(Ok(outcomes))
    }

    /// The current group as one write: each household's accepted changes, checked against
    /// the head it was read at, with a new snapshot where one is due.
    fn batch(&mut self) -> WriteBatch {
        let pending = std::mem::take(&mut self.pending);
        let mut rows_of: HashMap<HouseholdId, u64> = HashMap::new();
        for q in &pending {
            *rows_of.entry(q.id).or_default() += q.rows.len() as u64;
        }
        let last_of: HashMap<HouseholdId, usize> =
            pending.iter().enumerate().map(|(i, q)| (q.id, i)).collect();
        let households = pending
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                // A move to another grid is logged under the grid it leaves, so the phones of
                // that grid learn the household left; the phones of the new grid receive its
                // whole history through the recorded move.
                let moved_from = q.grid_before.filter(|g| *g != q.grid_after);
                let snapshot = (last_of[&q.id] == i)
                    .then(|| self.cache.get_mut(&q.id))
                    .flatten()
                    .filter(|c| {
                        c.head.since_snapshot + rows_of[&q.id] >= self.options.snapshot_after
                    })
                    .map(|c| c.doc.save());
                HouseholdWrite {
                    id: q.id,
                    head: self.heads.get(&q.id).copied().unwrap_or(0),
                    log_grid: moved_from.clone().unwrap_or_else(|| q.grid_after.clone()),
                    grid: q.grid_after,
                    moved_from,
                    rows: q.rows,
                    snapshot,
                }
            })
            .collect();
        WriteBatch {
            households,
            refused: std::mem::take(&mut self.refusals),
        }
    }

    /// The household's document as stored plus what this group accepted for it so far.
    fn reload(&mut self, id: HouseholdId) -> Result<Option<(HouseholdDoc, DocHead)>, StorageError> {
        self.cache.remove(&id);
        let earlier: Vec<u8> = self
            .pending
            .iter()
            .filter(|q| q.id == id)
            .flat_map(|q| q.rows.iter().flat_map(|r| r.bytes.iter().copied()))
            .collect();
        let stored = self.cached(id)?.map(|c| (c.doc.clone(), c.head));
        match stored {
            Some((mut doc, head)) => {
                if !earlier.is_empty() {
                    let changes = qiaomen_protocol::doc::decode_changes(
                        self.pending
                            .iter()
                            .filter(|q| q.id == id)
                            .flat_map(|q| q.rows.iter().map(|r| r.bytes.as_slice())),
                    )
                    .map_err(|_| StorageError::Corrupt(id))?;
                    doc.apply_decoded(changes)
                        .map_err(|_| StorageError::Corrupt(id))?;
                }
                Ok(Some((doc, head)))
            }
            // Created earlier in this same group: not stored yet, only queued.
            None if !earlier.is_empty() => HouseholdDoc::load(&earlier)
                .map(|d| Some((d, DocHead::default())))
                .map_err(|_| StorageError::Corrupt(id)),
            None => Ok(None),
        }
    }

    fn doc(&mut self, id: HouseholdId) -> Result<Option<&mut HouseholdDoc>, StorageError> {
        Ok(self.cached(id)?.map(|c| &mut c.doc))
    }

    fn cached(&mut self, id: HouseholdId) -> Result<Option<&mut Cached>, StorageError> {
        self.tick += 1;
        let tick = self.tick;
        if !self.cache.contains_key(&id) {
            let Some(stored) = self.storage.load_for_write(id)? else {
                return Ok(None);
            };
            let bytes = stored.bytes;
            // A stored document that does not load is quarantined by the caller: its
            // uploads are refused (temporarily) and nothing else is held up.
            let mut doc = HouseholdDoc::load(&bytes).map_err(|_| StorageError::Corrupt(id))?;
            let lineage = doc.lineage();
            self.make_room(id, lineage.ops());
            self.cache.insert(
                id,
                Cached {
                    doc,
                    head: stored.head,
                    lineage,
                    last_used: tick,
                },
            );
        }
        let c = self.cache.get_mut(&id).expect("present");
        c.last_used = tick;
        Ok(Some(c))
    }

    fn cache_put(&mut self, id: HouseholdId, mut doc: HouseholdDoc, head: DocHead) {
        self.tick += 1;
        let lineage = doc.lineage();
        self.make_room(id, lineage.ops());
        self.cache.insert(
            id,
            Cached {
                doc,
                head,
                lineage,
                last_used: self.tick,
            },
        );
    }

    /// Evicts the least recently used documents (never one the current group holds changes
    /// of) until one of `ops` operations fits within both the count and the operations budget.
    fn make_room(&mut self, id: HouseholdId, ops: u64) {
        let mut others = self.cache.len() - usize::from(self.cache.contains_key(&id));
        let mut held: u64 = self
            .cache
            .iter()
            .filter(|(k, _)| **k != id)
            .map(|(_, c)| c.lineage.ops())
            .sum();
        while others >= self.options.cache_capacity.max(1) || held + ops > self.options.cache_ops {
            let Some(oldest) = self
                .cache
                .iter()
                .filter(|(k, _)| **k != id && !self.pinned.contains(*k))
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| *k)
            else {
                return;
            };
            if let Some(c) = self.cache.remove(&oldest) {
                held -= c.lineage.ops();
                others -= 1;
            }
        }
    }

    /// Applies what it can of `batch` on top of `doc`, refusing the culprits (and what
    /// builds on them): the whole batch on a copy, and on failure each half in turn, down to
    /// single changes. A copy of the document per halving: `O(k log n)` copies for `k` bad
    /// changes among `n`, never one per change.
    fn settle(
        principal: Option<&Principal>,
        id: HouseholdId,
        doc: HouseholdDoc,
        batch: Vec<(usize, Change)>,
        bad: &mut HashSet<ChangeHash>,
        good: &mut Vec<(usize, Change)>,
        outcome: &mut Outcome,
    ) -> HouseholdDoc {
        let mut batch_ok = Vec::with_capacity(batch.len());
        for (n, change) in batch {
            if change.deps().iter().any(|d| bad.contains(d)) {
                bad.insert(change.hash());
                outcome.rejected.push(reject(
                    id,
                    n,
                    Some(change.hash()),
                    RejectCode::DependsOnRejected,
                ));
            } else {
                batch_ok.push((n, change));
            }
        }
        if batch_ok.is_empty() {
            return doc;
        }
        let mut trial = doc.clone();
        match apply_checked(principal, &mut trial, id, &batch_ok) {
            Ok(()) => {
                good.extend(batch_ok);
                trial
            }
            Err(code) if batch_ok.len() == 1 => {
                let (n, change) = batch_ok.remove(0);
                bad.insert(change.hash());
                outcome
                    .rejected
                    .push(reject(id, n, Some(change.hash()), code));
                doc
            }
            Err(_) => {
                let second = batch_ok.split_off(batch_ok.len() / 2);
                let doc = Self::settle(principal, id, doc, batch_ok, bad, good, outcome);
                Self::settle(principal, id, doc, second, bad, good, outcome)
            }
        }
    }

    /// A packed change rebuilt: each dependency found by its prefix among the household's
    /// changes uploaded before it in this request, then in the log; the change checked against
    /// the checksum it came with. A change that cannot be rebuilt exactly is refused
    /// `send_raw`, and the phone sends its own bytes.
    fn unpacked(
        &mut self,
        id: HouseholdId,
        unpacked: pack::Unpacked,
        exists: bool,
        before: &[(usize, Change)],
    ) -> Result<Result<Change, RejectCode>, StorageError> {
        let mut options: Vec<Vec<ChangeHash>> = Vec::new();
        for prefix in unpacked.dep_prefixes() {
            let mut found: Vec<ChangeHash> = before
                .iter()
                .map(|(_, c)| c.hash())
                .filter(|h| h.as_ref()[..pack::DEP_PREFIX] == prefix[..])
                .collect();
            for h in self.storage.hashes_with_prefix(id, prefix)? {
                let h = ChangeHash(h);
                if !found.contains(&h) {
                    found.push(h);
                }
            }
            if found.is_empty() {
                // What it builds on is not here (yet): as for a change sent whole.
                let code = if exists {
                    RejectCode::MissingDependencies
                } else {
                    RejectCode::UnknownDocument
                };
                return Ok(Err(code));
            }
            options.push(found);
        }
        // Almost always one candidate per prefix; when two changes of the household share a
        // prefix, the checksum tells which combination is meant.
        match unpacked.build_among(&options) {
            Ok(change) => Ok(Ok(change)),
            Err(_) => Ok(Err(RejectCode::SendRaw)),
        }
    }

    fn process(&mut self, upload: Parsed) -> Result<Outcome, StorageError> {
        let mut outcome = Outcome::default();
        let principal = upload.principal.as_deref();
        for dc in upload.docs {
            let id = dc.id;
            let mark = (
                outcome.accepted,
                outcome.rejected.len(),
                outcome.uploaded.len(),
            );
            let hashes: Vec<Option<ChangeHash>> = dc
                .changes
                .iter()
                .map(|c| match c {
                    Incoming::Raw(c) => Some(c.hash()),
                    _ => None,
                })
                .collect();
            let n_changes = dc.changes.len();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // A caught panic's log line names this household (`crate::panics`).
                let _named = crate::panics::household(id);
                self.process_doc(principal, dc, &mut outcome)
            }));
            let refuse_all = |outcome: &mut Outcome, code: RejectCode| {
                outcome.accepted = mark.0;
                outcome.rejected.truncate(mark.1);
                outcome.uploaded.truncate(mark.2);
                for n in 0..n_changes {
                    outcome
                        .rejected
                        .push(reject(id, n, hashes.get(n).copied().flatten(), code));
                }
            };
            match result {
                Ok(Ok(())) => {
                    if let Some(p) = principal {
                        self.keep_refused(p, id, &outcome.rejected[mark.1..])?;
                    }
                }
                // Its stored document (or what this group accepted for it) does not load.
                Ok(Err(StorageError::Corrupt(_))) => {
                    tracing::error!(household = %id, "stored household does not load; quarantined");
                    self.storage.quarantine(id, "does_not_load")?;
                    self.forget(id);
                    refuse_all(&mut outcome, RejectCode::Quarantined);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    // One line, no backtrace and no content: the household's id.
                    tracing::error!(household = %id, "a change made the write path panic; refused");
                    self.forget(id);
                    refuse_all(&mut outcome, RejectCode::BrokenHistory);
                }
            }
        }
        Ok(outcome)
    }

    /// Queues the refused changes of household `id` that held what a person typed (their
    /// bytes, as uploaded) for the group's transaction.
    fn keep_refused(
        &mut self,
        p: &Principal,
        id: HouseholdId,
        rejected: &[Rejection],
    ) -> Result<(), StorageError> {
        let seen = std::mem::take(&mut self.seen_bytes);
        let kept: Vec<(ChangeHash, RejectCode)> = rejected
            .iter()
            .filter(|r| r.code.keeps_content())
            .filter_map(|r| Some((ChangeHash(r.hash.as_slice().try_into().ok()?), r.code)))
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        let grid = match self.cache.get(&id) {
            Some(c) => c.doc.grid(),
            None => match self.storage.doc_grid(id)? {
                Some(g) => g,
                // Refused at its creation: the grid its first change names.
                None => kept
                    .iter()
                    .find_map(|(h, _)| {
                        let bytes = seen.get(h)?;
                        HouseholdDoc::load(bytes).ok().map(|d| d.grid())
                    })
                    .unwrap_or_default(),
            },
        };
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (hash, code) in kept {
            let Some(bytes) = seen.get(&hash) else {
                continue;
            };
            self.refusals.push(RefusedRow {
                doc: id,
                hash: hash.as_ref().try_into().expect("32 bytes"),
                grid: grid.clone(),
                device: Some(*p.device.as_bytes()),
                user: Some(*p.user.as_bytes()),
                code: code.name(),
                at_ms,
                bytes: bytes.clone(),
            });
        }
        Ok(())
    }

    /// Drops what this writer holds in memory of a household whose processing failed, keeping
    /// what the group accepted for it earlier (the cached copy is rebuilt from those).
    fn forget(&mut self, id: HouseholdId) {
        match self.reload(id) {
            Ok(Some((doc, head))) => self.cache_put(id, doc, head),
            _ => {
                self.cache.remove(&id);
            }
        }
    }

    fn process_doc(
        &mut self,
        principal: Option<&Principal>,
        dc: ParsedDoc,
        outcome: &mut Outcome,
    ) -> Result<(), StorageError> {
        let id = dc.id;
        // 0. Before anything is loaded: a quarantined household waits; a household of a grid
        //    the device's user never held (in none of the grids it has been in) is not theirs.
        if !self.cache.contains_key(&id) && self.storage.is_quarantined(id)? {
            reject_incoming(outcome, &dc, RejectCode::Quarantined);
            return Ok(());
        }
        if let Some(p) = principal
            && !self.cache.contains_key(&id)
            && let grids = self.storage.doc_grids(id)?
            && !grids.is_empty()
            && !may_touch(p, &grids)
        {
            reject_incoming(outcome, &dc, RejectCode::OutOfScope);
            return Ok(());
        }
        self.pinned.insert(id);
        let exists = self.doc(id)?.is_some();
        let head = self.cache.get(&id).map_or(0, |c| c.head.seq);
        self.heads.entry(id).or_insert(head);
        // 1. Rebuild the packed changes; refuse what is not a change.
        let keep_bytes = principal.is_some();
        self.seen_bytes.clear();
        let mut decoded: Vec<(usize, Change)> = Vec::new();
        for (n, incoming) in dc.changes.into_iter().enumerate() {
            match incoming {
                Incoming::Raw(change) => {
                    outcome.uploaded.push(change.hash());
                    if keep_bytes {
                        self.seen_bytes
                            .insert(change.hash(), change.raw_bytes().to_vec());
                    }
                    decoded.push((n, *change));
                }
                Incoming::Packed(unpacked) => {
                    match self.unpacked(id, *unpacked, exists, &decoded)? {
                        Ok(change) => {
                            outcome.uploaded.push(change.hash());
                            if keep_bytes {
                                self.seen_bytes
                                    .insert(change.hash(), change.raw_bytes().to_vec());
                            }
                            decoded.push((n, change));
                        }
                        Err(code) => outcome.rejected.push(reject(id, n, None, code)),
                    }
                }
                Incoming::Refused(code) => outcome.rejected.push(reject(id, n, None, code)),
            }
        }
        // 2. Sort out duplicates, dependencies, authors and Automerge's rules.
        let mut lineage = match self.cache.get(&id) {
            Some(c) => c.lineage.clone(),
            None => Lineage::default(),
        };
        let mut known: HashSet<ChangeHash> = HashSet::new();
        let mut refused: HashSet<ChangeHash> = HashSet::new();
        let mut candidates: Vec<(usize, Change)> = Vec::new();
        // A household new to the server: its changes are checked against an empty history.
        let empty = (!exists).then(automerge::Automerge::new);
        for (n, change) in decoded {
            let hash = change.hash();
            let have = match self.doc(id)? {
                Some(doc) => doc.has_change(&hash),
                None => false,
            } || self
                .storage
                .has_change(hash.as_ref().try_into().expect("32 bytes"))?;
            if have || known.contains(&hash) {
                outcome.accepted += 1; // already stored: acknowledge again (idempotent retry)
                continue;
            }
            if change.deps().iter().any(|d| refused.contains(d)) {
                refused.insert(hash);
                outcome
                    .rejected
                    .push(reject(id, n, Some(hash), RejectCode::DependsOnRejected));
                continue;
            }
            // Provenance: an authenticated device uploads only changes it authored, with an
            // actor bound to it.
            if let Some(p) = principal
                && let Err(code) = policy::check_author(p, &change)
            {
                refused.insert(hash);
                outcome.rejected.push(reject(id, n, Some(hash), code));
                continue;
            }
            let mut deps_ok = true;
            for d in change.deps() {
                let present =
                    known.contains(d) || self.doc(id)?.is_some_and(|doc| doc.has_change(d));
                if !present {
                    // Another server may have logged it since this document was cached.
                    if exists && self.storage.has_change(&d.0)? && !self.stale.contains(&id) {
                        self.stale.push(id);
                    }
                    deps_ok = false;
                    break;
                }
            }
            if !deps_ok {
                refused.insert(hash);
                let code = if exists {
                    RejectCode::MissingDependencies
                } else {
                    RejectCode::UnknownDocument
                };
                outcome.rejected.push(reject(id, n, Some(hash), code));
                continue;
            }
            // Automerge's own rules: stored, a change that breaks them would make the
            // household unloadable for everyone.
            let fault = match (self.cache.get_mut(&id), &empty) {
                (Some(c), _) => c.doc.check_change(&lineage, &change),
                (None, Some(empty)) => lineage.check(empty, &change),
                // A stored household stays cached (pinned) while it is processed.
                (None, None) => lineage.check(&automerge::Automerge::new(), &change),
            };
            let code = match fault {
                Err(qiaomen_protocol::integrity::Fault::TooManyOps) => Some(RejectCode::OverLimit),
                Err(f) => {
                    tracing::info!(household = %id, fault = f.as_str(), "change breaks its history; refused");
                    Some(RejectCode::BrokenHistory)
                }
                Ok(()) if lineage.ops() + change.len() as u64 > limits::MAX_DOC_OPS => {
                    Some(RejectCode::OverLimit)
                }
                Ok(()) => None,
            };
            if let Some(code) = code {
                refused.insert(hash);
                outcome.rejected.push(reject(id, n, Some(hash), code));
                continue;
            }
            lineage.record(&change);
            known.insert(hash);
            candidates.push((n, change));
        }
        if candidates.is_empty() {
            return Ok(());
        }
        // 3. Apply and check: all at once (the common case), else by bisection.
        let grid_before = self.doc(id)?.map(|doc| doc.grid());
        let accepted: Vec<(usize, Change)> = if exists {
            let c = self.cached(id)?.expect("exists");
            if apply_checked(principal, &mut c.doc, id, &candidates).is_ok() {
                lineage.settle();
                c.lineage = lineage;
                candidates
            } else {
                // Start again from what is stored (and accepted earlier in this group) and
                // find the culprits.
                let (doc, head) = match self.reload(id)? {
                    Some(d) => d,
                    None => {
                        // Never leave a change neither accepted nor refused: the phone takes
                        // silence for an acknowledgement.
                        for (n, c) in candidates {
                            outcome.rejected.push(reject(
                                id,
                                n,
                                Some(c.hash()),
                                RejectCode::UnknownDocument,
                            ));
                        }
                        return Ok(());
                    }
                };
                let mut good = Vec::new();
                let doc = Self::settle(
                    principal,
                    id,
                    doc,
                    candidates,
                    &mut HashSet::new(),
                    &mut good,
                    outcome,
                );
                self.cache_put(id, doc, head);
                good
            }
        } else {
            // A household new to the server: its changes must build a valid household of this
            // id, checked whole, with the same rules as an edit (visit days, entries under
            // their own ids). Its first change alone must create it; the rest settle on it.
            let mut bytes = Vec::new();
            for (_, c) in &candidates {
                bytes.extend_from_slice(c.raw_bytes());
            }
            let built = HouseholdDoc::load(&bytes).ok().and_then(|mut d| {
                let complete = d.missing_deps().is_empty()
                    && candidates.iter().all(|(_, c)| d.round_trips(c).is_ok());
                complete.then_some(d)
            });
            let whole = built.map(|mut d| {
                let valid = verdict(
                    principal,
                    &mut d,
                    &[],
                    id,
                    candidates.iter().map(|(_, c)| c),
                )
                .is_ok();
                (d, valid)
            });
            match whole {
                Some((doc, true)) => {
                    self.cache_put(id, doc, DocHead::default());
                    candidates
                }
                _ => {
                    let mut rest = candidates.into_iter();
                    let (n0, first) = rest.next().expect("candidates is not empty");
                    let base = HouseholdDoc::load(first.raw_bytes())
                        .map_err(|_| RejectCode::SchemaViolation)
                        .and_then(|mut d| {
                            d.round_trips(&first)
                                .map_err(|_| RejectCode::BrokenHistory)?;
                            verdict(principal, &mut d, &[], id, [&first]).map(|()| d)
                        });
                    match base {
                        Ok(doc) => {
                            let mut bad = HashSet::new();
                            let mut good = vec![(n0, first)];
                            let doc = Self::settle(
                                principal,
                                id,
                                doc,
                                rest.collect(),
                                &mut bad,
                                &mut good,
                                outcome,
                            );
                            self.cache_put(id, doc, DocHead::default());
                            good
                        }
                        Err(first_code) => {
                            let mut code = first_code;
                            for (n, c) in std::iter::once((n0, first)).chain(rest) {
                                outcome.rejected.push(reject(id, n, Some(c.hash()), code));
                                code = RejectCode::DependsOnRejected;
                            }
                            return Ok(());
                        }
                    }
                }
            }
        };
        if accepted.is_empty() {
            return Ok(());
        }
        // 4. Queue for the log: appended when the group commits.
        let rows: Vec<NewChange> = accepted
            .iter()
            .map(|(_, c)| NewChange {
                doc: id,
                hash: c.hash().as_ref().try_into().expect("32 bytes"),
                bytes: c.raw_bytes().to_vec(),
                device: principal.map(|p| *p.device.as_bytes()),
                user: principal.map(|p| *p.user.as_bytes()),
                clock_ok: principal.and_then(|p| p.clock_ok),
            })
            .collect();
        outcome.accepted += rows.len() as u32;
        let grid_after = self
            .cache
            .get(&id)
            .map(|c| c.doc.grid())
            .unwrap_or_default();
        self.pending.push(Queued {
            id,
            rows,
            grid_before,
            grid_after,
        });
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use automerge::{ROOT, transaction::Transactable};
    use qiaomen_protocol::{
        doc::Author,
        ids::{DeviceId, GridId, UserId},
        schema::{Household, SCHEMA_VERSION},
    };
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::storage::SqliteStorage;

    fn created() -> (HouseholdId, Vec<u8>, automerge::AutoCommit) {
        let a = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let id = HouseholdId::new();
        let mut doc =
            HouseholdDoc::create(&Household::new(id, GridId::new("g7"), "x", "1"), &a, 1).unwrap();
        let bytes = doc.save();
        let creation = doc.changes_since(&[]).remove(0);
        (id, creation, automerge::AutoCommit::load(&bytes).unwrap())
    }

    /// An upload of `changes` to household `id`, with no principal (the access rules skipped).
    pub(crate) fn upload(id: HouseholdId, changes: Vec<Vec<u8>>) -> Upload {
        Upload {
            principal: None,
            docs: vec![DocChanges {
                id,
                changes: changes.into_iter().map(ByteBuf::from).collect(),
                whole: None,
            }],
            packing: None,
        }
    }

    /// A household stored, and two edits of it on a phone: the second builds on the first.
    fn two_edits() -> (
        tempfile::TempDir,
        Ingestor<SqliteStorage>,
        HouseholdId,
        Vec<Change>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut ingestor =
            Ingestor::new(SqliteStorage::open(dir.path()).unwrap(), Default::default());
        let (id, creation, raw) = created();
        assert_eq!(
            ingestor
                .process_group(&[&upload(id, vec![creation])])
                .unwrap()[0]
                .accepted,
            1
        );
        let mut doc = HouseholdDoc::load(&raw.clone().save()).unwrap();
        let a = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let mut edits = Vec::new();
        for (door, t) in [("2", 10), ("3", 20)] {
            let (_, hash) = doc
                .edit(&a, t, |h| {
                    h.door_number = door.into();
                    Ok(())
                })
                .unwrap();
            let bytes = doc.change_bytes(&hash.unwrap()).unwrap();
            edits.push(Change::from_bytes(bytes).unwrap());
        }
        (dir, ingestor, id, edits)
    }

    fn packed_upload(id: HouseholdId, changes: &[Change]) -> Upload {
        let mut packer = pack::Packer::new();
        let packed = changes
            .iter()
            .map(|c| ByteBuf::from(packer.pack(c).unwrap()))
            .collect();
        Upload {
            principal: None,
            docs: vec![DocChanges {
                id,
                changes: packed,
                whole: None,
            }],
            packing: Some(Arc::new(Packing {
                table: packer.wire_table(),
                base_ms: packer.base_ms(),
            })),
        }
    }

    #[test]
    fn packed_changes_are_rebuilt_byte_for_byte_with_dependencies_from_the_log_and_the_upload() {
        let (dir, mut ingestor, id, edits) = two_edits();
        let up = packed_upload(id, &edits);
        let outcome = ingestor.process_group(&[&up]).unwrap().remove(0);
        assert_eq!((outcome.accepted, outcome.rejected.len()), (2, 0));
        assert_eq!(
            outcome.uploaded,
            edits.iter().map(Change::hash).collect::<Vec<_>>()
        );
        // What is logged is the phone's very change.
        let reader = SqliteStorage::open(dir.path()).unwrap();
        let logged = reader.doc_log(id, 1 << 40).unwrap();
        for e in &edits {
            let row = logged
                .iter()
                .find(|c| c.hash == e.hash().as_ref())
                .expect("logged");
            assert_eq!(row.bytes, e.raw_bytes());
        }
        // A retry is acknowledged again, stored once.
        let again = ingestor.process_group(&[&up]).unwrap().remove(0);
        assert_eq!((again.accepted, again.rejected.len()), (2, 0));
        assert_eq!(reader.doc_log(id, 1 << 40).unwrap().len(), 3);
    }

    #[test]
    fn a_packed_change_that_does_not_rebuild_is_sent_back_raw_and_one_without_its_dependency_waits()
    {
        let (dir, mut ingestor, id, edits) = two_edits();
        // A checksum that does not match: `send_raw`, nothing stored.
        let mut up = packed_upload(id, &edits[..1]);
        up.docs[0].changes[0][1] ^= 0x55;
        let outcome = ingestor.process_group(&[&up]).unwrap().remove(0);
        assert_eq!(outcome.accepted, 0);
        assert_eq!(outcome.rejected[0].code, RejectCode::SendRaw);
        assert!(outcome.rejected[0].hash.is_empty());
        // Garbage after the format byte, or no table: the same.
        let mut up = packed_upload(id, &edits[..1]);
        up.docs[0].changes[0].truncate(6);
        assert_eq!(
            ingestor.process_group(&[&up]).unwrap()[0].rejected[0].code,
            RejectCode::SendRaw
        );
        let mut up = packed_upload(id, &edits[..1]);
        up.packing = None;
        assert_eq!(
            ingestor.process_group(&[&up]).unwrap()[0].rejected[0].code,
            RejectCode::SendRaw
        );
        // The second edit alone: what it builds on is not on the server yet.
        let up = packed_upload(id, &edits[1..]);
        let outcome = ingestor.process_group(&[&up]).unwrap().remove(0);
        assert_eq!(outcome.rejected[0].code, RejectCode::MissingDependencies);
        let reader = SqliteStorage::open(dir.path()).unwrap();
        assert_eq!(reader.doc_log(id, 1 << 40).unwrap().len(), 1);
    }

    #[test]
    fn the_document_cache_stays_within_its_operations_budget_and_reloads_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (_, creation, _) = created();
        let one = Change::from_bytes(creation).unwrap().len() as u64;
        // Room for two households' operations, whatever the count allows.
        let options = IngestOptions {
            cache_ops: 2 * one + one / 2,
            ..Default::default()
        };
        let mut ingestor = Ingestor::new(SqliteStorage::open(dir.path()).unwrap(), options);
        let mut households = Vec::new();
        for _ in 0..5 {
            let (id, creation, raw) = created();
            let up = upload(id, vec![creation]);
            assert_eq!(ingestor.process_group(&[&up]).unwrap()[0].accepted, 1);
            let held: u64 = ingestor.cache.values().map(|c| c.lineage.ops()).sum();
            assert!(held <= 2 * one + one / 2, "{held} operations cached");
            households.push((id, raw));
        }
        assert_eq!(ingestor.cache.len(), 2);
        // The first household was dropped from memory: its next change is checked against
        // the stored document, loaded again.
        let (id, raw) = &mut households[0];
        assert!(!ingestor.cache.contains_key(id));
        raw.put(ROOT, "door_number", "9").unwrap();
        raw.commit();
        let edit = raw.get_last_local_change().unwrap().raw_bytes().to_vec();
        let outcome = &ingestor.process_group(&[&upload(*id, vec![edit])]).unwrap()[0];
        assert_eq!((outcome.accepted, outcome.rejected.len()), (1, 0));
        assert!(ingestor.cache.contains_key(id));
    }

    #[test]
    fn a_bad_change_to_a_household_created_in_the_same_group_is_refused_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingestor =
            Ingestor::new(SqliteStorage::open(dir.path()).unwrap(), Default::default());
        let (id, creation, mut raw) = created();
        raw.put(ROOT, "status", 42).unwrap();
        raw.commit();
        let bad = raw.get_last_local_change().unwrap().raw_bytes().to_vec();
        let (first, second) = (upload(id, vec![creation]), upload(id, vec![bad]));
        let outcomes = ingestor.process_group(&[&first, &second]).unwrap();
        assert_eq!(outcomes[0].accepted, 1);
        assert_eq!(outcomes[1].accepted, 0);
        assert_eq!(
            outcomes[1].rejected.len(),
            1,
            "refused, never silently dropped"
        );
        assert_eq!(outcomes[1].rejected[0].code, RejectCode::SchemaViolation);
        // The creation is in the log, under its grid.
        let reader = SqliteStorage::open(dir.path()).unwrap();
        assert_eq!(
            reader
                .log_since(0, 1 << 20, &["g7".to_string()])
                .unwrap()
                .changes
                .len(),
            1
        );
    }

    #[test]
    fn one_bad_change_in_a_new_households_upload_does_not_take_its_creation_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingestor =
            Ingestor::new(SqliteStorage::open(dir.path()).unwrap(), Default::default());
        let (id, creation, raw) = created();
        let mut bad_side = raw.clone();
        bad_side.put(ROOT, "status", 42).unwrap();
        bad_side.commit();
        let bad = bad_side
            .get_last_local_change()
            .unwrap()
            .raw_bytes()
            .to_vec();
        let mut good_side = raw;
        good_side.set_actor(automerge::ActorId::random());
        good_side.put(ROOT, "door_number", "1A").unwrap();
        good_side.commit();
        let good = good_side
            .get_last_local_change()
            .unwrap()
            .raw_bytes()
            .to_vec();
        let outcome = ingestor
            .process_group(&[&upload(id, vec![creation, bad, good])])
            .unwrap()
            .remove(0);
        assert_eq!(outcome.accepted, 2);
        let codes: Vec<_> = outcome.rejected.iter().map(|r| (r.n, r.code)).collect();
        assert_eq!(codes, vec![(1, RejectCode::SchemaViolation)]);
    }

    #[test]
    fn a_change_raising_the_schema_version_past_the_servers_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ingestor =
            Ingestor::new(SqliteStorage::open(dir.path()).unwrap(), Default::default());
        let (id, creation, mut raw) = created();
        ingestor
            .process_group(&[&upload(id, vec![creation])])
            .unwrap();
        raw.put(
            ROOT,
            "schema_version",
            automerge::ScalarValue::Uint(SCHEMA_VERSION + 1),
        )
        .unwrap();
        raw.commit();
        let newer = raw.get_last_local_change().unwrap().raw_bytes().to_vec();
        let outcome = ingestor
            .process_group(&[&upload(id, vec![newer])])
            .unwrap()
            .remove(0);
        assert_eq!(outcome.rejected.len(), 1);
        assert_eq!(outcome.rejected[0].code, RejectCode::SchemaViolation);
    }
}
