//! Every decoder that takes client bytes, on its fuzz corpus and crashers (`fuzz/corpus`,
//! `fuzz/artifacts`) and on bounded, deterministic mutations of each seed: none may panic.
//! With `QIAOMEN_WRITE_CORPUS=1` the seeds are (re)written first.

use std::{
    fs,
    path::{Path, PathBuf},
};

use qiaomen_protocol::{
    doc::Author,
    hostile,
    ids::MemberId,
    ids::{DeviceId, UserId},
    schema::{HouseholdStatus, Member, Relation},
};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("sync_request", hostile::sync_request),
    ("change", hostile::change),
    ("document", hostile::document),
    ("history", hostile::history),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// The seeds: the protocol's vectors as request bodies, real changes on the base document,
/// and whole documents.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    // Histories: one step per four bytes or so (actor, edit, mutation, its argument).
    out.push(("history", "counting".to_string(), (0u8..64).collect()));
    out.push((
        "history",
        "one-actor-no-mutation".to_string(),
        [0u8, 1, 12, 0].repeat(12),
    ));
    out.push((
        "history",
        "every-mutation".to_string(),
        (0u8..12).flat_map(|m| [m % 3, 1, m, 3, 5]).collect(),
    ));
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto-docs/vectors");
    let mut names: Vec<_> = fs::read_dir(&vectors)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".cbor.hex"))
        .collect();
    names.sort();
    for p in names {
        let cbor = unhex(&fs::read_to_string(&p).unwrap());
        let name = p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".cbor.hex", "");
        out.push((
            "sync_request",
            format!("vector-{name}"),
            zstd::bulk::compress(&cbor, 3).unwrap(),
        ));
    }
    let (id, mut doc) = hostile::base_document();
    let author = Author {
        user: UserId(uuid::Uuid::from_u128(1)),
        device: DeviceId(uuid::Uuid::from_u128(2)),
    };
    let mut visit = qiaomen_protocol::schema::Visit {
        id: qiaomen_protocol::ids::VisitId(uuid::Uuid::from_u128(3)),
        visit_day: "2025-11-15".parse().unwrap(),
        worker: author.user,
        device: author.device,
        started_at_ms: 1,
        ended_at_ms: None,
        gps: None,
        outcome: qiaomen_protocol::schema::VisitOutcome::Met,
        people_met: vec![],
        needs: vec![],
        disputes: vec![],
        hazards: vec![],
        publicity: vec![],
        note: autosurgeon::Text::with_value("老人身体还好"),
        demands_raised: vec![],
    };
    let h = doc.add_visit(&author, 2, &visit, &[]).unwrap();
    out.push(("change", "add-visit".into(), doc.change_bytes(&h).unwrap()));
    doc.edit(&author, 3, |hh| {
        hh.door_number = "1A".into();
        hh.status = HouseholdStatus::Moved;
        let m = MemberId(uuid::Uuid::from_u128(4));
        hh.members.insert(
            m,
            Member {
                id: m,
                relation: Relation::Head,
                name: "张三".into(),
                id_number: None,
                birth_date: None,
                phone: None,
                tags: vec![],
            },
        );
        Ok(())
    })
    .unwrap();
    let edit = doc.heads()[0];
    out.push((
        "change",
        "edit-facts-member".into(),
        doc.change_bytes(&edit).unwrap(),
    ));
    visit.id = qiaomen_protocol::ids::VisitId(uuid::Uuid::from_u128(5));
    let h = doc.add_visit(&author, 4, &visit, &[]).unwrap();
    out.push((
        "change",
        "second-visit".into(),
        doc.change_bytes(&h).unwrap(),
    ));
    out.push(("document", "with-visits".into(), doc.save()));
    let (_, mut base) = hostile::base_document();
    out.push(("document", "base".into(), base.save()));
    let _ = id;
    out
}

/// Deterministic mutations of `seed`: bit flips, truncations, duplicated and zeroed spans.
fn mutations(seed: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.len() as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let mut m = seed.to_vec();
            if m.is_empty() {
                return vec![next() as u8];
            }
            let at = next() as usize % m.len();
            match i % 5 {
                0 => m[at] ^= 1 << (next() % 8),
                1 => m.truncate(at),
                2 => {
                    let end = (at + 1 + next() as usize % 16).min(m.len());
                    let span = m[at..end].to_vec();
                    m.splice(at..at, span);
                }
                3 => {
                    let end = (at + 1 + next() as usize % 8).min(m.len());
                    m[at..end].iter_mut().for_each(|b| *b = 0xff);
                }
                _ => m[at] = next() as u8,
            }
            m
        })
        .collect()
}

#[test]
fn every_decoder_survives_its_corpus_its_crashers_and_mutations() {
    let dir = fuzz_dir();
    if std::env::var_os("QIAOMEN_WRITE_CORPUS").is_some() {
        for (target, name, bytes) in seeds() {
            let d = dir.join("corpus").join(target);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    for (target, run) in TARGETS {
        let mut files = Vec::new();
        for kind in ["corpus", "artifacts"] {
            if let Ok(entries) = fs::read_dir(dir.join(kind).join(target)) {
                files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
        files.sort();
        assert!(
            files.len() >= 2,
            "fuzz/corpus/{target} holds its seeds (QIAOMEN_WRITE_CORPUS=1 writes them)"
        );
        for f in &files {
            let bytes = fs::read(f).unwrap();
            run(&bytes);
            for m in mutations(&bytes, 300) {
                run(&m);
            }
        }
    }
}

#[test]
fn the_seeds_are_what_the_decoders_accept() {
    // A corpus of garbage would fuzz nothing: the seeds must decode.
    for (target, name, bytes) in seeds() {
        let ok = match target {
            "sync_request" => {
                qiaomen_protocol::wire::decode::<serde::de::IgnoredAny>(&bytes, 1 << 24).is_ok()
            }
            "change" => qiaomen_protocol::doc::decode_changes([bytes.as_slice()]).is_ok(),
            // Any bytes drive a history.
            "history" => true,
            _ => qiaomen_protocol::doc::HouseholdDoc::load(&bytes).is_ok(),
        };
        assert!(ok, "{target}/{name} decodes");
    }
}

/// The stateful target on inputs from a fixed-seed generator: histories of valid changes of
/// three actors, each possibly mutated at the Automerge level. Bounded (a few seconds on
/// stable, in CI); `QIAOMEN_HISTORY_RUNS` runs more.
#[test]
fn every_accepted_change_keeps_the_household_loadable() {
    let runs: u64 = std::env::var("QIAOMEN_HISTORY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..runs {
        let input: Vec<u8> = (0..64)
            .map(|_| {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect();
        hostile::history(&input);
    }
}
