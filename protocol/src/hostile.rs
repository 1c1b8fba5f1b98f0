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

/// A household's history built by several actors from `data`, each change possibly mutated at
/// the Automerge level (sequence numbers, actors, dependencies, operation ids, operations,
/// bytes), with the invariant the server relies on: **a change that passes
/// [`crate::integrity`] and round-trips keeps the household loadable** — saved and loaded
/// again, and loaded from its changes alone as a fresh phone would. Panics (an assertion) if
/// the invariant breaks; the fuzzer reports that as a crash.
pub fn history(data: &[u8]) {
    use automerge::{
        ActorId, AutoCommit, Change, ROOT, ReadDoc,
        legacy::{ElementId, Key, ObjectId, OpId},
        transaction::{CommitOptions, Transactable},
    };
    let mut input = Bytes(data);
    let (_, mut doc) = base_document();
    let mut lineage = doc.lineage();
    let mut log: Vec<Vec<u8>> = doc.changes_since(&[]);
    let actors: Vec<ActorId> = (0u8..3)
        .map(|i| {
            let mut a = DeviceId(uuid::Uuid::from_u128(2 + u128::from(i / 2)))
                .as_bytes()
                .to_vec();
            a.extend_from_slice(&[7 + i; 16]);
            ActorId::from(a)
        })
        .collect();
    for _ in 0..12 {
        if input.0.is_empty() {
            break;
        }
        // 1. A valid change of one actor, on the document as it stands.
        let actor = actors[input.byte() as usize % actors.len()].clone();
        let mut am: AutoCommit = doc.automerge().clone().with_actor(actor);
        let ok = crate::doc::guarded(|| {
            match input.byte() % 4 {
                0 => am.put(ROOT, "door_number", input.byte().to_string())?,
                1 => {
                    let t = am.put_object(
                        ROOT,
                        format!("t{}", input.byte() % 4),
                        automerge::ObjType::Text,
                    )?;
                    am.splice_text(&t, 0, 0, "ab")?;
                }
                2 => {
                    let key = format!("t{}", input.byte() % 4);
                    if let Some((automerge::Value::Object(_), t)) = am.get(ROOT, key.as_str())? {
                        let len = am.length(&t);
                        am.splice_text(&t, len.min(1), 0, "字")?;
                    } else {
                        am.put(ROOT, "address", "东村")?;
                    }
                }
                _ => am.delete(ROOT, "door_number")?,
            }
            Ok(())
        })
        .is_ok();
        am.commit_with(CommitOptions::default().with_message("m").with_time(1));
        let Some(honest) = ok.then(|| am.get_last_local_change()).flatten() else {
            continue;
        };
        // 2. Mutated at the Automerge level, or not.
        let mut e = honest.decode();
        e.hash = None;
        let pick = |input: &mut Bytes, n: u64| {
            OpId(
                u64::from(input.byte()) % n + 1,
                actors[input.byte() as usize % actors.len()].clone(),
            )
        };
        let mut flip: Option<(usize, u8)> = None;
        match input.byte() % 12 {
            0 => e.seq += 1 + u64::from(input.byte() % 2),
            1 => e.seq = e.seq.saturating_sub(1).max(1),
            2 => e.actor_id = actors[input.byte() as usize % actors.len()].clone(),
            3 => e.deps.clear(),
            4 => {
                let known: Vec<_> = log
                    .iter()
                    .filter_map(|b| Change::try_from(&b[..]).ok())
                    .map(|c| c.hash())
                    .collect();
                if !known.is_empty() {
                    e.deps = vec![known[input.byte() as usize % known.len()]];
                }
            }
            5 => {
                let s = e.start_op.get();
                let n = u64::from(input.byte() % 8);
                e.start_op =
                    std::num::NonZeroU64::new(s.saturating_sub(n).max(1)).expect("non-zero");
            }
            6 => e.start_op = e.start_op.saturating_add(u64::from(input.byte())),
            7 if !e.operations.is_empty() => {
                let i = input.byte() as usize % e.operations.len();
                e.operations[i].pred = vec![pick(&mut input, 40)].into();
            }
            8 if !e.operations.is_empty() => {
                let i = input.byte() as usize % e.operations.len();
                e.operations[i].obj = ObjectId::Id(pick(&mut input, 40));
            }
            9 if !e.operations.is_empty() => {
                let i = input.byte() as usize % e.operations.len();
                if e.operations[i].insert {
                    e.operations[i].key = Key::Seq(ElementId::Id(pick(&mut input, 40)));
                } else {
                    let op = e.operations[i].clone();
                    e.operations.push(op);
                }
            }
            10 if !e.operations.is_empty() => {
                let i = input.byte() as usize % e.operations.len();
                e.operations.remove(i);
            }
            11 => flip = Some((input.byte() as usize, 1 << (input.byte() % 8))),
            _ => {}
        }
        let Ok(rebuilt) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Change::from(e)))
        else {
            continue;
        };
        let mut bytes = rebuilt.raw_bytes().to_vec();
        if let Some((at, bit)) = flip {
            let at = at % bytes.len();
            bytes[at] ^= bit;
        }
        // 3. What the server does: decode, check, apply on a copy, give back byte for byte.
        let Ok(mut decoded) = crate::doc::decode_changes([bytes.as_slice()]) else {
            continue;
        };
        let change = decoded.remove(0);
        if doc.has_change(&change.hash()) || doc.check_change(&lineage, &change).is_err() {
            continue;
        }
        let mut trial = doc.clone();
        if trial.apply_decoded(vec![change.clone()]).is_err()
            || !trial.missing_deps().is_empty()
            || trial.round_trips(&change).is_err()
        {
            continue;
        }
        // 4. Accepted: the household must load, saved and as its changes alone.
        let saved = trial.save();
        let load = |b: &[u8]| {
            AutoCommit::load_with_options(
                b,
                automerge::LoadOptions::new()
                    .on_partial_load(automerge::OnPartialLoad::Error)
                    .verification_mode(automerge::VerificationMode::Check),
            )
            .is_ok()
        };
        assert!(
            load(&saved),
            "an accepted change left the saved household unloadable"
        );
        log.push(bytes);
        assert!(
            load(&log.concat()),
            "an accepted change left the household's changes unloadable"
        );
        doc = trial;
        lineage.record(&change);
        lineage.settle();
    }
}

/// Reads `data` a byte at a time, then zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
}
