//! The entry points that take bytes from clients, as the fuzz targets (`fuzz/`) and the corpus
//! replay test (`protocol/tests/hostile_inputs.rs`) drive them. Each must return on any input,
//! never panic, and never take unbounded memory: the server runs exactly these decoders on
//! what phones send.

use crate::{
    doc::{Author, HouseholdDoc},
    ids::{DeviceId, GridId, HouseholdId, UserId},
    schema::Household,
    wire::{self, SyncRequest, limits},
};

/// A sync request body (`POST /v1/sync`): zstd, then CBOR; and the CBOR layer alone.
pub fn sync_request(data: &[u8]) {
    let _ = wire::decode_request(data, limits::MAX_DECODED_BYTES);
    let _: Result<SyncRequest, _> = ciborium::from_reader(data);
}

/// One uploaded change: decoded, applied to a household document and validated, as the
/// server's writer does.
pub fn change(data: &[u8]) {
    let Ok(changes) = crate::doc::decode_changes([data]) else {
        return;
    };
    let (id, mut doc) = base_document();
    let before = doc.heads();
    if doc.apply_decoded(changes).is_ok() {
        let _ = doc.validate_since(&before, id);
        let _ = doc.household();
        let _ = crate::conflicts::conflicts(&mut doc);
    }
}

/// A whole document (what a phone imports, what the server loads from its log).
pub fn document(data: &[u8]) {
    if let Ok(mut doc) = HouseholdDoc::load(data) {
        let _ = doc.household();
        let _ = doc.validate_since(&[], HouseholdId(uuid::Uuid::nil()));
        let _ = crate::conflicts::conflicts(&mut doc);
    }
}

/// The household the change target applies changes to: fixed ids, so a corpus of changes
/// built on it stays meaningful.
pub fn base_document() -> (HouseholdId, HouseholdDoc) {
    let id = HouseholdId(uuid::Uuid::from_u128(
        0x0192_f4a0_7c3e_7d2a_9b1e_5a6c_8d0e_1f20,
    ));
    let author = Author {
        user: UserId(uuid::Uuid::from_u128(1)),
        device: DeviceId(uuid::Uuid::from_u128(2)),
    };
    // A fixed actor (device 2, then 16 bytes of 7), so the creation's hash never changes.
    let mut actor = author.device.as_bytes().to_vec();
    actor.extend_from_slice(&[7u8; 16]);
    let mut raw = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(actor));
    autosurgeon::reconcile(&mut raw, Household::new(id, GridId::new("g1"), "东村", "1"))
        .expect("a fixed household reconciles");
    raw.commit_with(
        automerge::transaction::CommitOptions::default()
            .with_message(author.to_message())
            .with_time(1_763_172_000_000),
    );
    let doc = HouseholdDoc::load(&raw.save()).expect("a fixed household loads");
    (id, doc)
}
