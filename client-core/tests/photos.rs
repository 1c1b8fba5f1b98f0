//! Photos on the phone, on a real store file: attached offline with the server's rules,
//! kept with their reference, sent only after it, freed once nothing refers to them.

use qiaomen_client_core::{PhotoState, Store, StoreError, StoreKey, StoreOptions};
use qiaomen_protocol::{
    DocError,
    doc::Author,
    ids::*,
    photo::{MAX_PHOTO_BYTES, PhotoSubject, hash_of},
    schema::*,
    validate::{Field, FieldError, Rule},
};

fn author() -> Author {
    Author {
        user: UserId::new(),
        device: DeviceId::new(),
    }
}

/// A JPEG's signature and `n` bytes after it (the phone judges the format by the bytes).
fn jpeg(n: usize, seed: u8) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0];
    b.extend((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    b
}

fn visit(a: &Author) -> Visit {
    Visit {
        id: VisitId::new(),
        visit_day: "2026-11-15".parse().unwrap(),
        worker: a.user,
        device: a.device,
        started_at_ms: 1,
        ended_at_ms: None,
        gps: None,
        outcome: VisitOutcome::Met,
        people_met: vec![],
        needs: vec![],
        disputes: vec![],
        hazards: vec![Hazard {
            kind: HazardKind::Electrical,
            detail: "电线下垂".into(),
        }],
        publicity: vec![],
        note: autosurgeon::Text::with_value("走访"),
        demands_raised: vec![],
    }
}

fn open(path: &std::path::Path, a: Author, key: Option<StoreKey>) -> Store {
    let mut s = Store::open(
        path,
        a,
        StoreOptions {
            key,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // 2026-11-16 in China: the visit of the 15th may be recorded.
    s.set_clock(|| 1_794_790_000_000);
    s
}

fn seeded(store: &mut Store, a: &Author) -> (HouseholdId, VisitId) {
    let h = Household::new(HouseholdId::new(), GridId::new("g1"), "东村三组", "3");
    let id = store.create_household(&h).unwrap();
    let v = visit(a);
    store.record_visit(id, &v, &[]).unwrap();
    (id, v.id)
}

fn field(e: StoreError) -> Option<FieldError> {
    match e {
        StoreError::Document(DocError::Field(f)) => Some(f),
        _ => None,
    }
}

#[test]
fn a_photo_attached_offline_is_kept_with_its_reference_and_survives_a_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let a = author();
    let key = StoreKey::new(&[7; StoreKey::LEN]).unwrap();
    let bytes = jpeg(300_000, 1);
    let (id, photo) = {
        let mut store = open(&path, a, Some(key.clone()));
        let (id, v) = seeded(&mut store, &a);
        let pending = store.pending_change_count().unwrap();
        let photo = store
            .attach_photo(
                id,
                PhotoSubject::Hazard { visit: v, item: 0 },
                &bytes,
                "电线下垂",
                1_794_780_000_000,
            )
            .unwrap();
        assert_eq!(photo.hash, hash_of(&bytes));
        assert_eq!(photo.size, bytes.len() as u64);
        assert_eq!(store.pending_change_count().unwrap(), pending + 1);
        (id, photo)
    };
    let mut store = open(&path, a, Some(key));
    assert_eq!(store.photos(id).unwrap(), vec![photo.clone()]);
    assert_eq!(store.photo_bytes(&photo.hash).unwrap(), Some(bytes.clone()));
    assert_eq!(
        store.photo_state(&photo.hash).unwrap(),
        Some(PhotoState::Pending { waiting: None })
    );
    assert_eq!(store.pending_photo_count().unwrap(), 1);
    // Encrypted with the store: the photo's bytes are nowhere in the file.
    let file = std::fs::read(&path).unwrap();
    let needle = &bytes[1000..1064];
    assert!(!file.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn what_the_server_would_refuse_is_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let a = author();
    let mut store = open(&dir.path().join("phone.db"), a, None);
    let (id, v) = seeded(&mut store, &a);
    let pending = store.pending_change_count().unwrap();
    let on_visit = PhotoSubject::Visit { visit: v };
    let refused = |store: &mut Store, subject: PhotoSubject, bytes: &[u8], caption: &str| {
        store
            .attach_photo(id, subject, bytes, caption, 1)
            .unwrap_err()
    };
    let cases = [
        (
            jpeg(MAX_PHOTO_BYTES as usize, 2),
            "",
            Rule::TooLarge,
            Field::Photo,
        ),
        (b"GIF89a....".to_vec(), "", Rule::MediaType, Field::Photo),
        (vec![], "", Rule::Empty, Field::Photo),
        (
            jpeg(10, 3),
            &*"字".repeat(201),
            Rule::TooLong,
            Field::PhotoCaption,
        ),
    ];
    for (bytes, caption, rule, f) in &cases {
        let e = refused(&mut store, on_visit.clone(), bytes, caption);
        assert_eq!(
            field(e),
            Some(FieldError {
                field: *f,
                rule: *rule
            })
        );
    }
    let e = refused(
        &mut store,
        PhotoSubject::Hazard { visit: v, item: 3 },
        &jpeg(10, 4),
        "",
    );
    assert!(matches!(e, StoreError::Document(DocError::InvalidEdit(_))));
    assert_eq!(store.pending_change_count().unwrap(), pending);
    assert_eq!(store.pending_photo_count().unwrap(), 0);
    assert!(store.photos(id).unwrap().is_empty());
    // The store is still whole: a good photo goes in after the refusals.
    store
        .attach_photo(id, on_visit, &jpeg(10, 5), "", 1)
        .unwrap();
    assert_eq!(store.pending_photo_count().unwrap(), 1);
}

#[test]
fn a_photo_is_sent_only_after_its_record_and_freed_once_nothing_refers_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = author();
    let mut store = open(&dir.path().join("phone.db"), a, None);
    let (id, v) = seeded(&mut store, &a);
    let photo = store
        .attach_photo(
            id,
            PhotoSubject::Visit { visit: v },
            &jpeg(50_000, 6),
            "",
            1,
        )
        .unwrap();
    // Its record is not acknowledged yet: nothing to send.
    assert!(store.photos_to_upload().unwrap().is_empty());
    let pending: Vec<_> = store
        .pending_changes(id)
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    store.mark_acknowledged(id, &pending).unwrap();
    let uploads = store.photos_to_upload().unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].hash, photo.hash);
    assert_eq!(uploads[0].size, 50_004);
    // Pieces are the photo's bytes from an offset.
    let all = store.photo_bytes(&photo.hash).unwrap().unwrap();
    assert_eq!(
        store.photo_piece(&photo.hash, 1000, 500).unwrap().unwrap(),
        all[1000..1500]
    );
    assert_eq!(
        store
            .photo_piece(&photo.hash, 49_990, 500)
            .unwrap()
            .unwrap(),
        all[49_990..]
    );
    // Sent: still held while the record refers to it.
    store.mark_photo_sent(&photo.hash).unwrap();
    assert_eq!(store.pending_photo_count().unwrap(), 0);
    assert_eq!(store.free_photos().unwrap(), 0);
    assert!(store.photo_bytes(&photo.hash).unwrap().is_some());
    // A refused photo keeps its bytes and its reason, and is never freed.
    let other = store
        .attach_photo(id, PhotoSubject::Household, &jpeg(100, 7), "", 1)
        .unwrap();
    store
        .mark_photo_refused(&other.hash, "hash_mismatch")
        .unwrap();
    assert_eq!(
        store.refused_photos().unwrap(),
        vec![(other.hash.clone(), "hash_mismatch".to_string())]
    );
    let ack = |store: &mut Store| {
        let pending: Vec<_> = store
            .pending_changes(id)
            .unwrap()
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        store.mark_acknowledged(id, &pending).unwrap();
    };
    ack(&mut store);
    // A supervisor removes the first photo's reference: its bytes are freed, the refused
    // photo's are not.
    let removal = {
        use automerge::{ROOT, transaction::Transactable};
        let mut doc = store.document(id).unwrap().automerge().clone();
        doc.set_actor(qiaomen_protocol::doc::actor_for(DeviceId::new()));
        let key = qiaomen_protocol::photo::root_key(&photo.id.to_string());
        doc.delete(ROOT, key.as_str()).unwrap();
        doc.commit();
        doc.get_last_local_change().unwrap().raw_bytes().to_vec()
    };
    store.apply_remote_changes(id, &[removal]).unwrap();
    assert_eq!(store.photos(id).unwrap(), vec![other.clone()]);
    assert_eq!(store.free_photos().unwrap(), 1);
    assert!(store.photo_bytes(&photo.hash).unwrap().is_none());
    assert!(store.photo_bytes(&other.hash).unwrap().is_some());
    // The household leaves the phone (its grid left the device's scope) only once its
    // refused photo is dealt with: what the worker took is not lost with it.
    assert_eq!(store.drop_households_outside(&["g2".into()]).unwrap(), 0);
    store.mark_photo_sent(&other.hash).unwrap();
    assert_eq!(
        store.photo_state(&other.hash).unwrap(),
        Some(PhotoState::Refused {
            code: "hash_mismatch".into()
        })
    );
}
