//! The byte-level test vectors of sync protocol v1 (`proto-docs/vectors/`), checked against
//! the code, so the spec (`proto-docs/SYNC-v1.md`) and the implementation cannot drift.
//!
//! Each vector is a pair: `NAME.cbor.hex`, the CBOR of one message before compression (the
//! canonical bytes), and `NAME.json`, the same message in a readable form together with its
//! CBOR in diagnostic notation. The photo vectors (SYNC-v1 §14) are one JSON file each. Every
//! file in the folder must belong to a vector built here.
//!
//! `QIAOMEN_WRITE_VECTORS=1 cargo test -p qiaomen-protocol --test vectors` (re)writes the files
//! from the messages built here, then checks them as usual.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use automerge::{ActorId, AutoCommit, transaction::CommitOptions};
use ciborium::Value as Cbor;
use qiaomen_protocol::{
    doc::{Author, HouseholdDoc, decode_changes},
    ids::{DeviceId, GridId, HouseholdId, PhotoId, UserId, Uuid, VisitId},
    pack,
    photo::{self, MAX_PHOTO_PIECE_BYTES, MediaType, Photo, PhotoSubject},
    schema::{Hazard, HazardKind, Household, Visit, VisitOutcome},
    validate,
    wire::{
        self, CONTENT_TYPE, DocChanges, PROTOCOL_VERSION, RejectCode, Rejection, SyncRequest,
        SyncResponse, WireError, limits,
    },
};
use serde_bytes::ByteBuf;
use serde_json::{Value as Json, json};

// ---- fixed inputs ---------------------------------------------------------------------------

const HOUSEHOLD_A: &str = "0192f4a0-7c3e-7d2a-9b1e-5a6c8d0e1f20";
const HOUSEHOLD_B: &str = "0192f4a1-0b5d-7e41-8c2f-3d4e5f607182";
const HOUSEHOLD_C: &str = "0192f4a2-4a6f-7a93-a1b4-c5d6e7f80912";
const USER: &str = "0192f49f-1111-7222-8333-444455556666";
const DEVICE: &str = "0192f49f-aaaa-7bbb-8ccc-dddd0000eeee";
/// The Automerge actor of the real changes: 16 bytes, as a phone's store makes one (a UUIDv7).
const ACTOR: &str = "0192f49f-cccc-7ddd-8eee-ffff00001111";
/// 2025-11-15 10:00:00 and 10:03:30 in China (UTC+8), in milliseconds.
const T_CREATE_MS: i64 = 1_763_172_000_000;
const T_EDIT_MS: i64 = 1_763_172_210_000;

const ALL_CODES: [RejectCode; 15] = [
    RejectCode::Malformed,
    RejectCode::SchemaViolation,
    RejectCode::DependsOnRejected,
    RejectCode::MissingDependencies,
    RejectCode::UnknownDocument,
    RejectCode::Forbidden,
    RejectCode::NotYourDevice,
    RejectCode::OutOfScope,
    RejectCode::NotAllowed,
    RejectCode::StaleOrder,
    RejectCode::SendRaw,
    RejectCode::BrokenHistory,
    RejectCode::OverLimit,
    RejectCode::Quarantined,
    RejectCode::InvalidField,
];

fn id(s: &str) -> HouseholdId {
    s.parse().expect("a fixed uuid")
}

/// A stand-in for a change hash: 32 fixed bytes.
fn fake_hash(seed: u8) -> ByteBuf {
    ByteBuf::from(
        (0..32u8)
            .map(|i| seed ^ i.wrapping_mul(7))
            .collect::<Vec<u8>>(),
    )
}

/// Opaque stand-ins for change bytes: the wire does not look inside a change.
/// The feature bits the vectors written before bit 64 carry (bits 1 to 32): they keep them,
/// so their bytes stay what they were.
const VECTOR_FEATURES: u32 = 63;
/// The feature bits of the vectors written before bit 128 (bits 1 to 64).
const WHOLE_VECTOR_FEATURES: u32 = 127;
/// The features of the vectors of packed responses (bit 128).
const PACKED_VECTOR_FEATURES: u32 = 255;
/// The features of the vectors of the most needed first (bit 256).
const NEEDED_VECTOR_FEATURES: u32 = 511;

fn fake_change(text: &str) -> ByteBuf {
    ByteBuf::from(text.as_bytes().to_vec())
}

fn code_name(code: RejectCode) -> String {
    match serde_json::to_value(code) {
        Ok(Json::String(s)) => s,
        other => panic!("a reject code serializes as a string, not {other:?}"),
    }
}

fn code_from_name(name: &str) -> Result<RejectCode, String> {
    ALL_CODES
        .into_iter()
        .find(|c| code_name(*c) == name)
        .ok_or_else(|| format!("unknown reject code {name:?}"))
}

// ---- hex, by hand ---------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("not hex: {:?}", String::from_utf8_lossy(pair)))
        })
        .collect()
}

// ---- the messages -----------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    Request(SyncRequest),
    Response(SyncResponse),
    Rejection(Rejection),
}

impl Msg {
    fn type_name(&self) -> &'static str {
        match self {
            Msg::Request(_) => "SyncRequest",
            Msg::Response(_) => "SyncResponse",
            Msg::Rejection(_) => "Rejection",
        }
    }

    /// The CBOR bytes the code writes (what `wire::encode` compresses).
    fn cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Msg::Request(m) => ciborium::into_writer(m, &mut out),
            Msg::Response(m) => ciborium::into_writer(m, &mut out),
            Msg::Rejection(m) => ciborium::into_writer(m, &mut out),
        }
        .expect("writing to a Vec cannot fail");
        out
    }

    fn from_cbor(type_name: &str, bytes: &[u8]) -> Result<Msg, String> {
        let e = |e: ciborium::de::Error<std::io::Error>| e.to_string();
        Ok(match type_name {
            "SyncRequest" => Msg::Request(ciborium::from_reader(bytes).map_err(e)?),
            "SyncResponse" => Msg::Response(ciborium::from_reader(bytes).map_err(e)?),
            "Rejection" => Msg::Rejection(ciborium::from_reader(bytes).map_err(e)?),
            other => return Err(format!("unknown message type {other:?}")),
        })
    }

    /// Through the whole wire encoding: zstd(CBOR) and back.
    fn check_wire_round_trip(&self, cbor: &[u8]) {
        let frame = zstd::bulk::compress(cbor, 3).expect("compress");
        match self {
            Msg::Request(m) => {
                let encoded = wire::encode(m);
                assert_eq!(encoded[..4], [0x28, 0xb5, 0x2f, 0xfd], "one zstd frame");
                assert_eq!(
                    &wire::decode_request(&encoded, limits::MAX_DECODED_BYTES).unwrap(),
                    m
                );
                assert_eq!(
                    &wire::decode_request(&frame, limits::MAX_DECODED_BYTES).unwrap(),
                    m
                );
            }
            Msg::Response(m) => {
                let encoded = wire::encode(m);
                assert_eq!(encoded[..4], [0x28, 0xb5, 0x2f, 0xfd], "one zstd frame");
                assert_eq!(
                    &wire::decode::<SyncResponse>(&encoded, limits::MAX_DECODED_BYTES).unwrap(),
                    m
                );
                assert_eq!(
                    &wire::decode::<SyncResponse>(&frame, limits::MAX_DECODED_BYTES).unwrap(),
                    m
                );
            }
            Msg::Rejection(m) => {
                assert_eq!(
                    &wire::decode::<Rejection>(&wire::encode(m), 1 << 20).unwrap(),
                    m
                );
            }
        }
    }

    fn to_json(&self) -> Json {
        match self {
            Msg::Request(r) => {
                let mut o = serde_json::Map::new();
                o.insert("v".into(), json!(r.version));
                o.insert("c".into(), json!(r.cursor));
                o.insert("d".into(), docs_to_json(&r.docs));
                if !r.grids.is_empty() {
                    o.insert("g".into(), json!(r.grids));
                }
                if let Some(digest) = r.scope_digest {
                    o.insert("s".into(), json!(digest));
                }
                if r.features != 0 {
                    o.insert("f".into(), json!(r.features));
                }
                if let Some(t) = r.extras_digest {
                    o.insert("t".into(), json!(t));
                }
                if !r.table.is_empty() {
                    o.insert(
                        "a".into(),
                        json!(r.table.iter().map(|e| hex(e)).collect::<Vec<_>>()),
                    );
                }
                if r.base_ms != 0 {
                    o.insert("b".into(), json!(r.base_ms));
                }
                if let Some(p) = r.pending {
                    o.insert("p".into(), json!(p));
                }
                if let Some(w) = r.whole {
                    o.insert("w".into(), whole_to_json(w));
                }
                if !r.held_query.is_empty() {
                    o.insert(
                        "h".into(),
                        json!(r.held_query.iter().map(|h| hex(h)).collect::<Vec<_>>()),
                    );
                }
                Json::Object(o)
            }
            Msg::Response(r) => {
                let mut o = json!({
                    "v": r.version,
                    "c": r.cursor,
                    "a": r.accepted,
                    "r": r.rejected.iter().map(rejection_to_json).collect::<Vec<_>>(),
                    "d": docs_to_json(&r.docs),
                    "m": r.more,
                });
                if let Some(scope) = &r.scope {
                    o["s"] = json!(scope);
                }
                if let Some(t) = r.extras_digest {
                    o["t"] = json!(t);
                }
                if r.features != 0 {
                    o["f"] = json!(r.features);
                }
                if let Some(x) = r.retire {
                    o["x"] = json!(x);
                }
                if let Some(u) = &r.rights {
                    o["u"] = serde_json::to_value(u).expect("rights as JSON");
                }
                if let Some(w) = r.whole {
                    o["w"] = whole_to_json(w);
                }
                if let Some(h) = &r.held {
                    o["h"] = json!(h);
                }
                if !r.table.is_empty() {
                    o["p"] = json!(r.table.iter().map(|e| hex(e)).collect::<Vec<_>>());
                }
                if r.base_ms != 0 {
                    o["b"] = json!(r.base_ms);
                }
                o
            }
            Msg::Rejection(r) => rejection_to_json(r),
        }
    }

    fn from_json(type_name: &str, v: &Json) -> Result<Msg, String> {
        Ok(match type_name {
            "SyncRequest" => {
                let o = object(
                    v,
                    &["v", "c", "d", "g", "s", "f", "t", "a", "b", "p", "w", "h"],
                )?;
                Msg::Request(SyncRequest {
                    response_budget: None,
                    agent: None,
                    table: table_from_json(o, "a")?,
                    base_ms: base_from_json(o)?,
                    pending: match o.get("p") {
                        None => None,
                        Some(_) => Some(uint(o, "p")?),
                    },
                    extras_digest: match o.get("t") {
                        None => None,
                        Some(_) => Some(uint(o, "t")?),
                    },
                    features: match o.get("f") {
                        None => 0,
                        Some(_) => uint(o, "f")? as u32,
                    },
                    scope_digest: match o.get("s") {
                        None => None,
                        Some(_) => Some(uint(o, "s")?),
                    },
                    cursor_check: None,
                    version: uint(o, "v")? as u32,
                    cursor: match o.get("c") {
                        None | Some(Json::Null) => None,
                        Some(_) => Some(uint(o, "c")?),
                    },
                    docs: docs_from_json(o.get("d"))?,
                    grids: match o.get("g") {
                        None => Vec::new(),
                        Some(g) => serde_json::from_value(g.clone()).map_err(|e| e.to_string())?,
                    },
                    whole: o.get("w").map(whole_from_json).transpose()?,
                    journal: vec![],
                    held_query: match o.get("h") {
                        None => Vec::new(),
                        Some(Json::Array(a)) => a
                            .iter()
                            .map(|h| {
                                h.as_str()
                                    .ok_or_else(|| "a hash in h is not a hex string".to_string())
                                    .and_then(unhex)
                                    .map(ByteBuf::from)
                            })
                            .collect::<Result<_, _>>()?,
                        Some(other) => return Err(format!("h is not an array: {other}")),
                    },
                })
            }
            "SyncResponse" => {
                let o = object(
                    v,
                    &[
                        "v", "c", "a", "r", "d", "m", "s", "t", "f", "x", "u", "w", "h", "p", "b",
                    ],
                )?;
                Msg::Response(SyncResponse {
                    rights: match o.get("u") {
                        None => None,
                        Some(u) => {
                            Some(serde_json::from_value(u.clone()).map_err(|e| e.to_string())?)
                        }
                    },
                    features: match o.get("f") {
                        None => 0,
                        Some(_) => uint(o, "f")? as u32,
                    },
                    retire: match o.get("x") {
                        None => None,
                        Some(x) => {
                            Some(serde_json::from_value(x.clone()).map_err(|e| e.to_string())?)
                        }
                    },
                    extras_digest: match o.get("t") {
                        None => None,
                        Some(_) => Some(uint(o, "t")?),
                    },
                    scope: match o.get("s") {
                        None => None,
                        Some(g) => {
                            Some(serde_json::from_value(g.clone()).map_err(|e| e.to_string())?)
                        }
                    },
                    cursor_check: None,
                    version: uint(o, "v")? as u32,
                    cursor: uint(o, "c")?,
                    accepted: uint(o, "a")? as u32,
                    rejected: match o.get("r") {
                        None => Vec::new(),
                        Some(Json::Array(a)) => a
                            .iter()
                            .map(rejection_from_json)
                            .collect::<Result<_, _>>()?,
                        Some(other) => return Err(format!("r is not an array: {other}")),
                    },
                    docs: docs_from_json(o.get("d"))?,
                    more: match o.get("m") {
                        None => false,
                        Some(Json::Bool(b)) => *b,
                        Some(other) => return Err(format!("m is not a bool: {other}")),
                    },
                    whole: o.get("w").map(whole_from_json).transpose()?,
                    journal: vec![],
                    held: match o.get("h") {
                        None => None,
                        Some(h) => {
                            Some(serde_json::from_value(h.clone()).map_err(|e| e.to_string())?)
                        }
                    },
                    table: table_from_json(o, "p")?,
                    base_ms: base_from_json(o)?,
                })
            }
            "Rejection" => Msg::Rejection(rejection_from_json(v)?),
            other => return Err(format!("unknown message type {other:?}")),
        })
    }
}

/// A packed changes' table (`a` of a request, `p` of a response): hex strings.
fn table_from_json(o: &serde_json::Map<String, Json>, key: &str) -> Result<Vec<ByteBuf>, String> {
    match o.get(key) {
        None => Ok(vec![]),
        Some(Json::Array(a)) => a
            .iter()
            .map(|e| {
                e.as_str()
                    .ok_or("a table entry is not a hex string".to_string())
                    .and_then(unhex)
                    .map(ByteBuf::from)
            })
            .collect(),
        Some(other) => Err(format!("{key} is not an array: {other}")),
    }
}

/// The base time `b` of packed changes.
fn base_from_json(o: &serde_json::Map<String, Json>) -> Result<i64, String> {
    match o.get("b") {
        None => Ok(0),
        Some(b) => b.as_i64().ok_or(format!("b is not an integer: {b}")),
    }
}

fn docs_to_json(docs: &[DocChanges]) -> Json {
    Json::Array(
        docs.iter()
            .map(|d| {
                let mut o = json!({
                    "i": d.id.to_string(),
                    "ch": d.changes.iter().map(|c| hex(c)).collect::<Vec<_>>(),
                });
                if let Some(w) = &d.whole {
                    o["w"] = json!(hex(w));
                }
                o
            })
            .collect(),
    )
}

/// The hash of a real change.
fn hash_of_change(change: &[u8]) -> Vec<u8> {
    decode_changes([change])
        .expect("a real change")
        .remove(0)
        .hash()
        .0
        .to_vec()
}

fn whole_to_json(w: wire::WholePosition) -> Json {
    let mut o = json!({ "s": w.seq, "a": w.after.to_string() });
    if w.pass != wire::WholePass::All {
        o["p"] = json!(u8::from(w.pass));
    }
    if let Some(day) = w.day {
        o["d"] = json!(day.to_string());
    }
    o
}

fn whole_from_json(v: &Json) -> Result<wire::WholePosition, String> {
    let o = object(v, &["s", "a", "p", "d"])?;
    Ok(wire::WholePosition {
        seq: uint(o, "s")?,
        after: text(o, "a")?.parse().map_err(|e| format!("a: {e}"))?,
        pass: match o.get("p") {
            None => wire::WholePass::All,
            Some(_) => u8::try_from(uint(o, "p")?)
                .map_err(|_| "p is not a pass".to_string())?
                .try_into()
                .map_err(|e: &str| format!("p: {e}"))?,
        },
        day: match o.get("d") {
            None => None,
            Some(_) => Some(text(o, "d")?.parse().map_err(|e| format!("d: {e}"))?),
        },
    })
}

fn rejection_to_json(r: &Rejection) -> Json {
    json!({ "i": r.doc.to_string(), "n": r.n, "h": hex(&r.hash), "k": code_name(r.code) })
}

fn object<'a>(v: &'a Json, allowed: &[&str]) -> Result<&'a serde_json::Map<String, Json>, String> {
    let o = v.as_object().ok_or_else(|| format!("not an object: {v}"))?;
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unexpected key {k:?}"));
    }
    Ok(o)
}

fn uint(o: &serde_json::Map<String, Json>, key: &str) -> Result<u64, String> {
    o.get(key)
        .and_then(Json::as_u64)
        .ok_or_else(|| format!("{key} is not an unsigned integer"))
}

fn text<'a>(o: &'a serde_json::Map<String, Json>, key: &str) -> Result<&'a str, String> {
    o.get(key)
        .and_then(Json::as_str)
        .ok_or_else(|| format!("{key} is not a string"))
}

fn docs_from_json(v: Option<&Json>) -> Result<Vec<DocChanges>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let a = v.as_array().ok_or("d is not an array")?;
    a.iter()
        .map(|d| {
            let o = object(d, &["i", "ch", "w"])?;
            let changes = o
                .get("ch")
                .and_then(Json::as_array)
                .ok_or("ch is not an array")?
                .iter()
                .map(|c| {
                    c.as_str()
                        .ok_or_else(|| "a change is not a hex string".to_string())
                        .and_then(unhex)
                        .map(ByteBuf::from)
                })
                .collect::<Result<_, _>>()?;
            Ok(DocChanges {
                id: text(o, "i")?.parse().map_err(|e| format!("i: {e}"))?,
                changes,
                whole: match o.get("w") {
                    None => None,
                    Some(_) => Some(ByteBuf::from(unhex(text(o, "w")?)?)),
                },
            })
        })
        .collect()
}

fn rejection_from_json(v: &Json) -> Result<Rejection, String> {
    let o = object(v, &["i", "n", "h", "k"])?;
    Ok(Rejection {
        doc: text(o, "i")?.parse().map_err(|e| format!("i: {e}"))?,
        n: uint(o, "n")? as u32,
        hash: ByteBuf::from(unhex(text(o, "h")?)?),
        code: code_from_name(text(o, "k")?)?,
    })
}

/// CBOR diagnostic notation (RFC 8949 §8) of a decoded item: what the bytes say, whatever
/// the Rust types make of them.
fn diagnostic(v: &Cbor) -> String {
    let join = |items: Vec<String>| items.join(", ");
    match v {
        Cbor::Integer(i) => i128::from(*i).to_string(),
        Cbor::Bytes(b) => format!("h'{}'", hex(b)),
        Cbor::Text(s) => serde_json::to_string(s).expect("strings serialize"),
        Cbor::Bool(b) => b.to_string(),
        Cbor::Null => "null".into(),
        Cbor::Float(f) => format!("{f:?}"),
        Cbor::Tag(t, inner) => format!("{t}({})", diagnostic(inner)),
        Cbor::Array(a) => format!("[{}]", join(a.iter().map(diagnostic).collect())),
        Cbor::Map(m) => format!(
            "{{{}}}",
            join(
                m.iter()
                    .map(|(k, v)| format!("{}: {}", diagnostic(k), diagnostic(v)))
                    .collect()
            )
        ),
        other => panic!("no diagnostic notation for {other:?}"),
    }
}

// ---- the vectors ------------------------------------------------------------------------------

struct Vector {
    name: String,
    description: String,
    msg: Msg,
    /// Facts about the vector that are not part of the message (e.g. the hashes of real
    /// Automerge changes), checked like the rest.
    notes: Option<Json>,
}

fn vector(name: &str, description: &str, msg: Msg) -> Vector {
    Vector {
        name: name.into(),
        description: description.into(),
        msg,
        notes: None,
    }
}

/// Two real Automerge changes of household A, made deterministically: its creation, then a
/// door-number edit on top of it.
fn real_changes() -> Vec<Vec<u8>> {
    let author = Author {
        user: UserId(USER.parse().unwrap()),
        device: DeviceId(DEVICE.parse().unwrap()),
    };
    // The actor is bound to the device: its id followed by 16 bytes of this opening.
    let actor_uuid: Uuid = ACTOR.parse().unwrap();
    let mut actor = author.device.as_bytes().to_vec();
    actor.extend_from_slice(actor_uuid.as_bytes());
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor));
    let mut household =
        Household::new(id(HOUSEHOLD_A), GridId::new("dongcun-03"), "东村三组", "17");
    autosurgeon::reconcile(&mut doc, &household).unwrap();
    let first = doc
        .commit_with(
            CommitOptions::default()
                .with_message(author.to_message())
                .with_time(T_CREATE_MS),
        )
        .unwrap();
    household.door_number = "17A".into();
    autosurgeon::reconcile(&mut doc, &household).unwrap();
    let second = doc
        .commit_with(
            CommitOptions::default()
                .with_message(author.to_message())
                .with_time(T_EDIT_MS),
        )
        .unwrap();
    [first, second]
        .iter()
        .map(|h| doc.get_change_by_hash(h).unwrap().raw_bytes().to_vec())
        .collect()
}

/// What the real changes say, for the vector's notes; and a check that a server would take
/// them: the first builds household A, the second is a valid edit of it.
fn real_change_notes(changes: &[Vec<u8>]) -> Json {
    let decoded = decode_changes(changes.iter().map(Vec::as_slice)).expect("real changes");
    let mut doc = HouseholdDoc::load(&changes[0]).expect("the first change builds a household");
    let h = doc.household().unwrap();
    assert_eq!((h.id, h.grid.as_str()), (id(HOUSEHOLD_A), "dongcun-03"));
    let before = doc.heads();
    doc.apply_changes([changes[1].as_slice()]).unwrap();
    doc.validate_since(&before, id(HOUSEHOLD_A)).unwrap();
    assert_eq!(doc.household().unwrap().door_number, "17A");
    Json::Array(
        decoded
            .iter()
            .map(|c| {
                let message = c.message().unwrap_or_default();
                assert!(Author::from_message(message).is_some(), "an author message");
                json!({
                    "hash": hex(c.hash().as_ref()),
                    "actor": c.actor_id().to_hex_string(),
                    "seq": c.seq(),
                    "time_ms": c.timestamp(),
                    "author_message": message,
                    "deps": c.deps().iter().map(|d| hex(d.as_ref())).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn vectors() -> Vec<Vector> {
    let a = id(HOUSEHOLD_A);
    let b = id(HOUSEHOLD_B);
    let c = id(HOUSEHOLD_C);
    let request = |cursor, docs, grids: &[&str]| {
        Msg::Request(SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: 0,
            extras_digest: None,
            scope_digest: None,
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor,
            docs,
            grids: grids.iter().map(|g| g.to_string()).collect(),
            whole: None,
            journal: vec![],
            held_query: vec![],
        })
    };
    let response = |cursor, accepted, rejected, docs, more| {
        Msg::Response(SyncResponse {
            features: 0,
            retire: None,
            rights: None,
            extras_digest: None,
            scope: None,
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor,
            accepted,
            rejected,
            docs,
            more,
            whole: None,
            journal: vec![],
            held: None,
            table: vec![],
            base_ms: 0,
        })
    };
    let rejection = |doc, n, hash, code| Rejection { doc, n, hash, code };
    let mut out = vec![
        vector(
            "request-first-sync",
            "A phone with no sync state (fresh install, or reset) and nothing to upload: no cursor, every household the device may read.",
            request(None, vec![], &[]),
        ),
        vector(
            "request-first-sync-grids",
            "A first sync narrowed to two grids: no cursor, g lists the grids.",
            request(None, vec![], &["dongcun-03", "dongcun-04"]),
        ),
        vector(
            "request-idle",
            "The idle check: a phone that synced before, with nothing pending, asks what is new after log position 1234.",
            request(Some(1234), vec![], &[]),
        ),
        vector(
            "request-idle-grids",
            "The idle check of a phone scoped to one grid: it sends its grids on every request.",
            request(Some(1234), vec![], &["dongcun-03"]),
        ),
        vector(
            "request-idle-large-cursor",
            "A cursor above 2^32 is an 8-byte unsigned integer (major type 0, additional info 27).",
            request(Some(5_000_000_000), vec![], &[]),
        ),
        vector(
            "request-upload",
            "An upload: two changes of household A (opaque placeholder bytes: the wire never looks inside a change), the cursor 42, one grid.",
            request(
                Some(42),
                vec![DocChanges {
                    id: a,
                    changes: vec![fake_change("change-1"), fake_change("change-2")],
                    whole: None,
                }],
                &["dongcun-03"],
            ),
        ),
        vector(
            "request-upload-two-households",
            "An upload of changes of two households in one request; each household appears once, its changes oldest first.",
            request(
                Some(42),
                vec![
                    DocChanges {
                        id: a,
                        changes: vec![fake_change("a-1")],
                        whole: None,
                    },
                    DocChanges {
                        id: b,
                        changes: vec![fake_change("b-1"), fake_change("b-2"), fake_change("b-3")],
                        whole: None,
                    },
                ],
                &[],
            ),
        ),
        vector(
            "response-idle",
            "The answer to request-idle when nothing is new: the same cursor, nothing accepted, refused or sent.",
            response(1234, 0, vec![], vec![], false),
        ),
        vector(
            "response-upload-accepted",
            "The answer to request-upload when both changes are durably stored and nothing else is new: a = 2, the cursor moves past the two new log rows.",
            response(44, 2, vec![], vec![], false),
        ),
        vector(
            "response-full",
            "A response with everything: one of two uploaded changes of household A accepted, the second refused (schema_violation, its hash), changes of households B and C the phone lacks, and more = true (call again with cursor 57).",
            response(
                57,
                1,
                vec![rejection(
                    a,
                    1,
                    fake_hash(0xa0),
                    RejectCode::SchemaViolation,
                )],
                vec![
                    DocChanges {
                        id: b,
                        changes: vec![fake_change("b-4"), fake_change("b-5")],
                        whole: None,
                    },
                    DocChanges {
                        id: c,
                        changes: vec![fake_change("c-1")],
                        whole: None,
                    },
                ],
                true,
            ),
        ),
        vector(
            "response-every-reject-code",
            "A response refusing six uploaded changes of household A, one per reject code (n = position in the upload); a malformed change has an empty hash.",
            response(
                44,
                0,
                ALL_CODES
                    .iter()
                    .enumerate()
                    .map(|(n, code)| {
                        let hash = if *code == RejectCode::Malformed {
                            ByteBuf::new()
                        } else {
                            fake_hash(0xb0 + n as u8)
                        };
                        rejection(a, n as u32, hash, *code)
                    })
                    .collect(),
                vec![],
                false,
            ),
        ),
    ];
    out.push(vector(
        "request-idle-scope-digest",
        "An idle check from a phone whose last response gave it the scope [dongcun-03, dongcun-04]: s is scope_digest of those grids (FNV-1a 64 over the sorted codes, each followed by a newline), so the server leaves s out of its answer while the scope is unchanged.",
        Msg::Request(SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: 0,
            extras_digest: None,
            scope_digest: Some(qiaomen_protocol::wire::scope_digest(&["dongcun-04", "dongcun-03"])),
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor: Some(44),
            docs: vec![],
            grids: vec![],
            whole: None,
            journal: vec![],
            held_query: vec![],
        }),
    ));
    out.push(vector(
        "request-idle-features",
        "An idle check from a phone that understands the reject code stale_order (feature bit 1 in f): only such a phone is sent it; another gets not_allowed in its place.",
        Msg::Request(SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: qiaomen_protocol::wire::FEATURE_STALE_ORDER,
            extras_digest: None,
            scope_digest: Some(qiaomen_protocol::wire::scope_digest(&["dongcun-04", "dongcun-03"])),
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor: Some(44),
            docs: vec![],
            grids: vec![],
            whole: None,
            journal: vec![],
            held_query: vec![],
        }),
    ));
    out.push(vector(
        "request-idle-extras",
        "An idle check from a phone that holds workflow settings and task lists whose digest (t, FNV-1a 64 of the JSON the server answered) it got from an earlier response: the server sends t back only when what it would answer has changed, and only then does the phone call GET /api/v1/workflow and /api/v1/tasks.",
        Msg::Request(SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: VECTOR_FEATURES,
            extras_digest: Some(qiaomen_protocol::wire::fnv1a(b"[]")),
            scope_digest: Some(qiaomen_protocol::wire::scope_digest(&["dongcun-04", "dongcun-03"])),
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor: Some(44),
            docs: vec![],
            grids: vec![],
            whole: None,
            journal: vec![],
            held_query: vec![],
        }),
    ));
    out.push(vector(
        "response-extras",
        "An idle answer telling the phone that its workflow settings or task lists changed (t differs from the request's): the phone fetches them with the JSON API and keeps t for its next request.",
        Msg::Response(SyncResponse {
            features: 0,
            retire: None,
            rights: None,
            extras_digest: Some(0x0123_4567_89ab_cdef),
            scope: None,
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor: 44,
            accepted: 0,
            rejected: vec![],
            docs: vec![],
            more: false,
            whole: None,
            journal: vec![],
            held: None,
            table: vec![],
            base_ms: 0,
        }),
    ));
    out.push(vector(
        "response-scope",
        "An idle answer that carries the device's scope (s): the grids its user may read now. A phone drops households of other grids, and fetches the whole scope once from no cursor when a grid is new to it.",
        Msg::Response(SyncResponse {
            features: 0,
            retire: None,
            rights: None,
            extras_digest: None,
            scope: Some(vec!["dongcun-03".into(), "dongcun-04".into()]),
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor: 44,
            accepted: 0,
            rejected: vec![],
            docs: vec![],
            more: false,
            whole: None,
            journal: vec![],
            held: None,
            table: vec![],
            base_ms: 0,
        }),
    ));
    out.push(vector(
        "response-rights",
        "An idle answer to a phone that announced feature bit 32: with the scope (s), what its user may do (u): every grant (grid g, role r, from f, until u, in ms) and the teams (t), computed at n. The phone keeps both and runs the server's rules before it commits an edit; its next s is the rights digest of the two.",
        Msg::Response(SyncResponse {
            features: VECTOR_FEATURES,
            retire: None,
            rights: Some(qiaomen_protocol::policy::Rights {
                grants: vec![
                    qiaomen_protocol::policy::Grant {
                        grid: "dongcun-03".into(),
                        role: qiaomen_protocol::policy::Role::GridWorker,
                        from_ms: 1_767_196_800_000,
                        until_ms: Some(1_780_243_200_000),
                    },
                    qiaomen_protocol::policy::Grant {
                        grid: "dongcun-04".into(),
                        role: qiaomen_protocol::policy::Role::GridWorker,
                        from_ms: 1_780_243_200_000,
                        until_ms: None,
                    },
                ],
                teams: Default::default(),
                at_ms: 1_781_000_000_000,
            }),
            extras_digest: None,
            scope: Some(vec!["dongcun-04".into()]),
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor: 44,
            accepted: 0,
            rejected: vec![],
            docs: vec![],
            more: false,
            whole: None,
            journal: vec![],
            held: None,
            table: vec![],
            base_ms: 0,
        }),
    ));
    out.push(vector(
        "request-idle-pending",
        "An idle check from a phone that reports what it holds unacknowledged (p: changes plus unsent task reports; feature bit 8 in f). A retiring device ends on such a request with no changes and p = 0.",
        Msg::Request(SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: Some(0),
            features: VECTOR_FEATURES,
            extras_digest: None,
            scope_digest: Some(qiaomen_protocol::wire::scope_digest(&["dongcun-04", "dongcun-03"])),
            cursor_check: None,
            version: PROTOCOL_VERSION,
            cursor: Some(44),
            docs: vec![],
            grids: vec![],
            whole: None,
            journal: vec![],
            held_query: vec![],
        }),
    ));
    for (x, text) in [
        (
            wire::Retire::Retiring,
            "retiring: an administrator retired the device; the phone uploads what it holds, then sends a request with no changes and p = 0. No changes are sent down; c is the request's",
        ),
        (
            wire::Retire::Retired,
            "retired: the answer to a retiring device's request with no changes and p = 0; the device has ended and the phone wipes the enrollment's data now",
        ),
    ] {
        out.push(vector(
            &format!(
                "response-{}",
                serde_json::to_value(x).unwrap().as_str().unwrap()
            ),
            &format!("An answer to a phone that announced feature bit 8, with x = {text}."),
            Msg::Response(SyncResponse {
                features: VECTOR_FEATURES,
                retire: Some(x),
                rights: None,
                extras_digest: None,
                scope: None,
                cursor_check: None,
                version: PROTOCOL_VERSION,
                cursor: 44,
                accepted: 0,
                rejected: vec![],
                docs: vec![],
                more: false,
                whole: None,
                journal: vec![],
                held: None,
                table: vec![],
                base_ms: 0,
            }),
        ));
    }
    for (n, code) in ALL_CODES.iter().enumerate() {
        let name = code_name(*code);
        let hash = if *code == RejectCode::Malformed {
            ByteBuf::new()
        } else {
            fake_hash(0xc0 + n as u8)
        };
        out.push(vector(
            &format!("rejection-{}", name.replace('_', "-")),
            &format!(
                "One Rejection (an element of SyncResponse.r) with code {name}{}.",
                if *code == RejectCode::Malformed {
                    ": the bytes are not a change, so the hash is empty"
                } else {
                    ""
                }
            ),
            Msg::Rejection(rejection(a, n as u32, hash, *code)),
        ));
    }
    let real = real_changes();
    let mut packer = qiaomen_protocol::pack::Packer::new();
    let packed: Vec<ByteBuf> = real
        .iter()
        .map(|c| ByteBuf::from(packer.pack_bytes(c).expect("packs")))
        .collect();
    let mut packed_request = request(
        None,
        vec![DocChanges {
            id: a,
            changes: packed,
            whole: None,
        }],
        &["dongcun-03"],
    );
    if let Msg::Request(r) = &mut packed_request {
        r.features = VECTOR_FEATURES;
        r.table = packer.wire_table();
        r.base_ms = packer.base_ms();
    }
    out.push(Vector {
        name: "request-upload-packed".into(),
        description: "The two changes of request-upload-automerge as packed changes (SYNC-v1 §4.4), with the request's table `a` (the actor id, then the author message) and base time `b` (the first change's time). The second change's one dependency is the first change's hash prefix. A server rebuilds exactly the chunks of request-upload-automerge.".into(),
        notes: Some(json!({ "changes": real_change_notes(&real) })),
        msg: packed_request,
    });
    // A first sync by whole documents (SYNC-v1 §7.3.1): household A whole, made of the two
    // real changes, then the phone's next request.
    let whole = automerge::Automerge::load(&real.concat())
        .expect("the real changes load")
        .save_nocompress();
    let position = wire::WholePosition {
        seq: 2,
        after: a,
        pass: wire::WholePass::All,
        day: None,
    };
    let mut first_page = response(
        0,
        0,
        vec![],
        vec![DocChanges {
            id: a,
            changes: vec![],
            whole: Some(ByteBuf::from(whole)),
        }],
        true,
    );
    if let Msg::Response(r) = &mut first_page {
        r.features = WHOLE_VECTOR_FEATURES;
        r.whole = Some(position);
    }
    out.push(Vector {
        name: "response-first-sync-whole".into(),
        description: "A page of a first sync by whole documents (feature bit 64, SYNC-v1 §7.3.1) to a phone that sent f = 127: household A as one whole document `w` (Automerge's saved form with uncompressed columns, holding the two changes of request-upload-automerge), `ch` empty. Households are left after it, so c is 0, m is true and `w` says where the next page goes on: position 2 of the log, after household A.".into(),
        notes: Some(json!({ "changes": real_change_notes(&real) })),
        msg: first_page.clone(),
    });
    let mut next = request(None, vec![], &[]);
    if let Msg::Request(r) = &mut next {
        r.features = WHOLE_VECTOR_FEATURES;
        r.whole = Some(position);
    }
    // After a lost answer (SYNC-v1 §7.4.1): the hashes of the lost upload's changes, and
    // the answer saying the server holds the second.
    let mut asking = request(Some(44), vec![], &[]);
    if let Msg::Request(r) = &mut asking {
        r.held_query = [hash_of_change(&real[0]), hash_of_change(&real[1])]
            .into_iter()
            .map(ByteBuf::from)
            .collect();
    }
    out.push(vector(
        "request-held-query",
        "After an upload whose answer was lost (the two changes of request-upload-automerge): the phone asks which of them the server holds, by hash (`h`), before sending any body again.",
        asking,
    ));
    let mut answer = response(44, 0, vec![], vec![], false);
    if let Msg::Response(r) = &mut answer {
        r.held = Some(vec![1]);
    }
    out.push(vector(
        "response-held",
        "The answer to request-held-query: the server holds the second change (`h`: its position in the request's `h`); the phone acknowledges it and sends the first again.",
        answer,
    ));
    // Packed changes in a response (SYNC-v1 §4.4.1): a phone holding household A's first
    // change receives the second packed.
    let mut down = pack::Packer::new();
    let second = down
        .pack_bytes(&real[1])
        .expect("the real change packs to itself");
    let mut packed_down = response(
        2,
        0,
        vec![],
        vec![DocChanges {
            id: a,
            changes: vec![ByteBuf::from(second)],
            whole: None,
        }],
        false,
    );
    if let Msg::Response(r) = &mut packed_down {
        r.features = PACKED_VECTOR_FEATURES;
        r.table = down.wire_table();
        r.base_ms = down.base_ms();
    }
    out.push(Vector {
        name: "response-packed".into(),
        description: "A response to a phone that announced bit 128 (f = 255) and holds household A's first change: the second change of request-upload-automerge packed (SYNC-v1 §4.4.1), with the response's table `p` (the actor id, then the author message) and base time `b` (the change's own time). Its one dependency is the first change's hash prefix, which the phone finds among what it holds.".into(),
        notes: Some(json!({ "changes": real_change_notes(&real) })),
        msg: packed_down,
    });
    out.push(vector(
        "request-first-sync-whole-next",
        "The phone's request after response-first-sync-whole: still no cursor, the response's `w` sent back, f = 127.",
        next,
    ));
    // The most needed first (feature bit 256): household A has a resident in a key group on
    // 2026-11-30, so it comes in the first pass; the position says so.
    let needed = wire::WholePosition {
        seq: 2,
        after: a,
        pass: wire::WholePass::Needed,
        day: Some("2026-11-30".parse().expect("a day")),
    };
    let mut needed_page = first_page.clone();
    if let Msg::Response(r) = &mut needed_page {
        r.features = NEEDED_VECTOR_FEATURES;
        r.whole = Some(needed);
    }
    out.push(Vector {
        name: "response-first-sync-needed".into(),
        description: "A page of a first sync by whole documents to a phone that announced bit 256 (f = 511, SYNC-v1 §7.3.1): household A whole, in the first pass (`p` = 1: the households with a resident in a key group on day `d`, or a demand not closed). The phone sends `w` back as it is, `p` and `d` included.".into(),
        notes: Some(json!({ "changes": real_change_notes(&real) })),
        msg: needed_page,
    });
    let mut needed_next = request(None, vec![], &[]);
    if let Msg::Request(r) = &mut needed_next {
        r.features = NEEDED_VECTOR_FEATURES;
        r.whole = Some(needed);
    }
    out.push(vector(
        "request-first-sync-needed-next",
        "The phone's request after response-first-sync-needed: no cursor, the response's `w` sent back whole (its pass and day too), f = 511.",
        needed_next,
    ));
    out.push(Vector {
        name: "request-upload-automerge".into(),
        description: "An upload of two real Automerge changes of household A, made deterministically (fixed actor, fixed times, author message): its creation by a phone (schema_version 2, grid dongcun-03) and a door-number edit that depends on it. A v1 server accepts both.".into(),
        notes: Some(json!({ "changes": real_change_notes(&real) })),
        msg: request(
            None,
            vec![DocChanges {
                id: a,
                changes: real.into_iter().map(ByteBuf::from).collect(),
                whole: None,
            }],
            &["dongcun-03"],
        ),
    });
    out
}

// ---- photo vectors (SYNC-v1 §14) --------------------------------------------------------------
//
// Photos are not sync messages: each photo vector is one JSON file (`NAME.json`, no
// `.cbor.hex`), built here from the code and compared with the file whole.

const PHOTO_ID: &str = "0192f4a3-5b7c-7d8e-9fa0-b1c2d3e4f506";
const VISIT_ID: &str = "0192f4a3-6c8d-7e9f-a0b1-c2d3e4f50617";
/// The bytes the `photo-reference` vector's hash is the SHA-256 of.
const PHOTO_REFERENCE_BYTES: &[u8] = b"qiaomen photo vector";
/// The size of the photo of the `photo-upload-exchange` vector, and its three pieces.
const EXCHANGE_PHOTO_BYTES: usize = 100;
const EXCHANGE_PIECE_BYTES: usize = 40;

fn author() -> Author {
    Author {
        user: UserId(Uuid::parse_str(USER).unwrap()),
        device: DeviceId(Uuid::parse_str(DEVICE).unwrap()),
    }
}

fn fixed_photo() -> Photo {
    let a = author();
    Photo {
        id: PhotoId(Uuid::parse_str(PHOTO_ID).unwrap()),
        hash: photo::hash_of(PHOTO_REFERENCE_BYTES),
        size: PHOTO_REFERENCE_BYTES.len() as u64,
        media_type: MediaType::Jpeg,
        taken_at_ms: T_EDIT_MS,
        caption: "电线下垂".into(),
        subject: PhotoSubject::Hazard {
            visit: VisitId(Uuid::parse_str(VISIT_ID).unwrap()),
            item: 0,
        },
        by: a.user,
        device: a.device,
    }
}

/// An Automerge value as the `document` form of a photo vector writes it: a map as an
/// object, a text string as a string, every other scalar tagged with its Automerge type.
fn automerge_json(doc: &AutoCommit, value: automerge::Value<'_>, obj: &automerge::ObjId) -> Json {
    use automerge::{ObjType, ReadDoc, ScalarValue, Value};
    match value {
        Value::Object(ObjType::Map) => {
            let mut o = serde_json::Map::new();
            for key in doc.keys(obj) {
                let (v, id) = doc.get(obj, key.as_str()).unwrap().unwrap();
                o.insert(key, automerge_json(doc, v, &id));
            }
            Json::Object(o)
        }
        Value::Object(other) => panic!("a photo reference holds no {other:?}"),
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => json!(s.as_str()),
            ScalarValue::Uint(n) => json!({ "uint": n }),
            ScalarValue::Int(n) => json!({ "int": n }),
            ScalarValue::Bytes(b) => json!({ "bytes": hex(b) }),
            other => panic!("a photo reference holds no {other:?}"),
        },
    }
}

/// The readable form of the `document` form: ids (16-byte values) as UUIDs, numbers bare.
fn readable(v: &Json) -> Json {
    match v {
        Json::Object(o) if o.len() == 1 && (o.contains_key("uint") || o.contains_key("int")) => {
            o.values().next().unwrap().clone()
        }
        Json::Object(o) if o.len() == 1 && o.contains_key("bytes") => {
            let bytes = unhex(o["bytes"].as_str().unwrap()).unwrap();
            json!(Uuid::from_slice(&bytes).unwrap().hyphenated().to_string())
        }
        Json::Object(o) => Json::Object(o.iter().map(|(k, v)| (k.clone(), readable(v))).collect()),
        other => other.clone(),
    }
}

/// `photo-reference`: the fixed photo attached through the real `HouseholdDoc::attach_photo`
/// (autosurgeon into the household's AutoCommit), read back from the document.
fn photo_reference_vector() -> Json {
    use automerge::{ROOT, ReadDoc};
    let a = author();
    let p = fixed_photo();
    let household = Household::new(id(HOUSEHOLD_A), GridId::new("dongcun-03"), "东村", "17");
    let mut doc = HouseholdDoc::create(&household, &a, T_CREATE_MS).unwrap();
    let visit = Visit {
        id: VisitId(Uuid::parse_str(VISIT_ID).unwrap()),
        visit_day: "2025-11-15".parse().unwrap(),
        worker: a.user,
        device: a.device,
        started_at_ms: T_CREATE_MS,
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
        note: autosurgeon::Text::with_value(""),
        demands_raised: vec![],
    };
    doc.add_visit(&a, T_CREATE_MS, &visit, &[]).unwrap();
    let before = doc.heads();
    doc.attach_photo(&a, T_EDIT_MS, &p).unwrap();
    // The server's check of the change passes; the reference reads back as the photo.
    doc.validate_since(&before, household.id)
        .expect("the reference passes validate_since");
    assert_eq!(doc.photos(), vec![p.clone()]);
    let key = photo::root_key(PHOTO_ID);
    assert_eq!(key, format!("photo:{PHOTO_ID}"));
    let (value, obj) = doc.automerge().get(ROOT, key.as_str()).unwrap().unwrap();
    let document = automerge_json(doc.automerge(), value, &obj);
    assert!(photo::is_hash(&p.hash));
    json!({
        "name": "photo-reference",
        "type": "PhotoReference",
        "description": "A photo reference as the household document holds it (SYNC-v1 §14.2): under its own root key, attached to the first hazard of a visit, written by HouseholdDoc::attach_photo and read back from the Automerge document. `document` gives each value with its Automerge type; `reference` is the same with ids as UUIDs.",
        "root_key": key,
        "document": { key.clone(): document.clone() },
        "reference": readable(&document),
        "notes": {
            "bytes_ascii": std::str::from_utf8(PHOTO_REFERENCE_BYTES).unwrap(),
            "bytes_hex": hex(PHOTO_REFERENCE_BYTES),
            "sha256": p.hash,
            "size": p.size,
            "media_type_of_bytes": MediaType::of_bytes(PHOTO_REFERENCE_BYTES).map(MediaType::mime),
            "mime": p.media_type.mime(),
            "change_time_ms": T_EDIT_MS,
        },
    })
}

/// The 100 bytes of the exchange's photo: a JPEG signature, then the ASCII of
/// "qiaomen photo vector " repeated, cut at 100 bytes.
fn exchange_photo() -> Vec<u8> {
    let mut b = vec![0xff, 0xd8, 0xff, 0xe0];
    while b.len() < EXCHANGE_PHOTO_BYTES {
        b.extend_from_slice(b"qiaomen photo vector ");
    }
    b.truncate(EXCHANGE_PHOTO_BYTES);
    b
}

fn headers(pairs: &[(&str, String)]) -> Json {
    Json::Array(pairs.iter().map(|(k, v)| json!([k, v])).collect())
}

/// `photo-upload-exchange`: HEAD, PATCH, PATCH cut, HEAD, PATCH (complete).
fn photo_exchange_vector() -> Json {
    let bytes = exchange_photo();
    let hash = photo::hash_of(&bytes);
    let path = format!("/v1/photos/{hash}");
    let auth = ("Authorization", "Bearer qm_d_EXAMPLE".to_string());
    let len = bytes.len() as u64;
    let head = |offset: u64| {
        json!({
            "request": {
                "line": format!("HEAD {path} HTTP/1.1"),
                "headers": headers(std::slice::from_ref(&auth)),
            },
            "response": {
                "line": "HTTP/1.1 200 OK",
                "headers": headers(&[
                    ("Upload-Offset", offset.to_string()),
                    ("Upload-Length", len.to_string()),
                ]),
            },
        })
    };
    let patch = |from: usize, to: usize, answered: bool| {
        let mut resp = vec![
            ("Upload-Offset", to.to_string()),
            ("Upload-Length", len.to_string()),
        ];
        if to == bytes.len() {
            resp.push(("Upload-Complete", "?1".to_string()));
        }
        json!({
            "request": {
                "line": format!("PATCH {path} HTTP/1.1"),
                "headers": headers(&[
                    auth.clone(),
                    ("Upload-Offset", from.to_string()),
                    ("Content-Type", "application/offset+octet-stream".to_string()),
                    ("Content-Length", (to - from).to_string()),
                ]),
                "body_range": [from, to],
                "body_hex": hex(&bytes[from..to]),
            },
            "response": if answered {
                json!({ "line": "HTTP/1.1 204 No Content", "headers": headers(&resp) })
            } else {
                Json::Null
            },
        })
    };
    let p = EXCHANGE_PIECE_BYTES;
    let mut cut = patch(p, 2 * p, false);
    cut["note"] = json!(
        "the connection is cut after the body was sent: the server took the piece in, the phone does not know"
    );
    json!({
        "name": "photo-upload-exchange",
        "type": "HttpExchange",
        "description": "The upload of a 100-byte photo in three pieces (SYNC-v1 §14.3): HEAD (nothing held), PATCH bytes 0-40, PATCH bytes 40-80 whose answer is lost, HEAD (80 held), PATCH bytes 80-100, which completes it. Byte ranges are [from, to), from 0.",
        "photo": {
            "hash": hash,
            "size": len,
            "bytes_hex": hex(&bytes),
            "media_type": MediaType::of_bytes(&bytes).map(MediaType::mime),
        },
        "exchanges": [head(0), patch(0, p, true), cut, head(2 * p as u64), patch(2 * p, bytes.len(), true)],
    })
}

fn photo_vectors() -> Vec<(String, Json)> {
    vec![
        ("photo-reference".into(), photo_reference_vector()),
        ("photo-upload-exchange".into(), photo_exchange_vector()),
    ]
}

fn header<'a>(h: &'a Json, name: &str) -> Option<&'a str> {
    h.as_array()?
        .iter()
        .find(|p| p[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|p| p[1].as_str())
}

/// The exchange file read on its own terms: each PATCH starts where the server said its
/// bytes end (the last answer's `Upload-Offset`, a HEAD's after a lost answer), carries its
/// range of the photo, and the pieces put together are the photo its URL names.
fn check_exchange(file: &Json) -> Result<(), String> {
    let photo_hex = file["photo"]["bytes_hex"]
        .as_str()
        .ok_or("photo.bytes_hex")?;
    let bytes = unhex(photo_hex)?;
    let hash = file["photo"]["hash"].as_str().ok_or("photo.hash")?;
    if photo::hash_of(&bytes) != hash || file["photo"]["size"] != json!(bytes.len()) {
        return Err("the photo's hash or size is not its bytes'".into());
    }
    validate::photo_bytes(&bytes).map_err(|e| format!("the photo's bytes: {e:?}"))?;
    let mut server: Option<u64> = None; // what the phone knows the server holds
    let mut held = 0u64; // what the server holds
    let mut assembled = Vec::new();
    let mut complete = false;
    for x in file["exchanges"].as_array().ok_or("exchanges")? {
        let line = x["request"]["line"].as_str().ok_or("request line")?;
        if line != format!("HEAD /v1/photos/{hash} HTTP/1.1")
            && line != format!("PATCH /v1/photos/{hash} HTTP/1.1")
        {
            return Err(format!("unexpected request {line}"));
        }
        let resp = &x["response"];
        if line.starts_with("HEAD") {
            let offset: u64 = header(&resp["headers"], "Upload-Offset")
                .ok_or("HEAD without Upload-Offset")?
                .parse()
                .map_err(|_| "offset")?;
            if offset != held {
                return Err(format!("HEAD says {offset}, the server holds {held}"));
            }
            server = Some(offset);
            continue;
        }
        let h = &x["request"]["headers"];
        let from: u64 = header(h, "Upload-Offset")
            .ok_or("PATCH without Upload-Offset")?
            .parse()
            .map_err(|_| "offset")?;
        if Some(from) != server {
            return Err(format!(
                "PATCH from {from} without knowing the server's offset"
            ));
        }
        if header(h, "Content-Type") != Some("application/offset+octet-stream") {
            return Err("PATCH content type".into());
        }
        let body = unhex(x["request"]["body_hex"].as_str().ok_or("body_hex")?)?;
        let range = &x["request"]["body_range"];
        let to = from + body.len() as u64;
        if *range != json!([from, to])
            || header(h, "Content-Length") != Some(body.len().to_string().as_str())
            || body.len() > MAX_PHOTO_PIECE_BYTES
            || body[..] != bytes[from as usize..to as usize]
        {
            return Err(format!("PATCH from {from}: range, length or bytes"));
        }
        assembled.extend_from_slice(&body);
        held = to;
        if resp.is_null() {
            server = None; // answer lost: ask again
            continue;
        }
        let offset: u64 = header(&resp["headers"], "Upload-Offset")
            .ok_or("204 without Upload-Offset")?
            .parse()
            .map_err(|_| "offset")?;
        if offset != to || resp["line"] != json!("HTTP/1.1 204 No Content") {
            return Err(format!("PATCH to {to} answered {offset}"));
        }
        complete = header(&resp["headers"], "Upload-Complete") == Some("?1");
        if complete != (to == bytes.len() as u64) {
            return Err("Upload-Complete is not sent exactly on completion".into());
        }
        server = Some(offset);
    }
    if !complete || assembled != bytes {
        return Err("the pieces are not the whole photo".into());
    }
    Ok(())
}

// ---- the files --------------------------------------------------------------------------------

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto-docs/vectors")
}

const KEY_ORDER: &[&str] = &[
    "name",
    "type",
    "description",
    "message",
    "cbor_diagnostic",
    "notes",
    "v",
    "c",
    "a",
    "r",
    "d",
    "m",
    "g",
    "i",
    "n",
    "h",
    "k",
    "ch",
    "changes",
    "hash",
    "actor",
    "seq",
    "time_ms",
    "author_message",
    "deps",
    // The photo vectors (JSON only).
    "root_key",
    "reference",
    "document",
    "photo",
    "exchanges",
    "request",
    "response",
    "line",
    "headers",
    "body_range",
    "body_hex",
    "note",
];

/// Pretty JSON with keys in wire order (not alphabetical), for people reading the files.
fn pretty(v: &Json, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent + 1);
    match v {
        Json::Object(o) if !o.is_empty() => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by_key(|k| {
                (
                    KEY_ORDER
                        .iter()
                        .position(|x| x == k)
                        .unwrap_or(KEY_ORDER.len()),
                    k.as_str(),
                )
            });
            out.push_str("{\n");
            for (i, k) in keys.iter().enumerate() {
                out.push_str(&format!("{pad}{}: ", Json::from(k.as_str())));
                pretty(&o[k.as_str()], indent + 1, out);
                out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
            }
            out.push_str(&"  ".repeat(indent));
            out.push('}');
        }
        Json::Array(a) if !a.is_empty() => {
            out.push_str("[\n");
            for (i, item) in a.iter().enumerate() {
                out.push_str(&pad);
                pretty(item, indent + 1, out);
                out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            out.push_str(&"  ".repeat(indent));
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn file_json(v: &Vector, cbor: &[u8]) -> Json {
    let decoded: Cbor = ciborium::from_reader(cbor).expect("our own CBOR decodes");
    let mut o = serde_json::Map::new();
    o.insert("name".into(), json!(v.name));
    o.insert("type".into(), json!(v.msg.type_name()));
    o.insert("description".into(), json!(v.description));
    o.insert("message".into(), v.msg.to_json());
    o.insert("cbor_diagnostic".into(), json!(diagnostic(&decoded)));
    if let Some(notes) = &v.notes {
        o.insert("notes".into(), notes.clone());
    }
    Json::Object(o)
}

fn write_vectors(all: &[Vector]) {
    let dir = vectors_dir();
    fs::create_dir_all(&dir).unwrap();
    let photos = photo_vectors();
    let names: BTreeSet<&str> = all
        .iter()
        .map(|v| v.name.as_str())
        .chain(photos.iter().map(|(n, _)| n.as_str()))
        .collect();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(stem) = vector_stem(&file)
            && !names.contains(stem)
        {
            fs::remove_file(&path).unwrap();
        }
    }
    for v in all {
        let cbor = v.msg.cbor();
        fs::write(dir.join(format!("{}.cbor.hex", v.name)), hex(&cbor) + "\n").unwrap();
        let mut text = String::new();
        pretty(&file_json(v, &cbor), 0, &mut text);
        text.push('\n');
        fs::write(dir.join(format!("{}.json", v.name)), text).unwrap();
    }
    for (name, file) in &photos {
        let _ = fs::remove_file(dir.join(format!("{name}.cbor.hex")));
        let mut text = String::new();
        pretty(file, 0, &mut text);
        text.push('\n');
        fs::write(dir.join(format!("{name}.json")), text).unwrap();
    }
}

/// The vector name of a vector file, `None` for other files.
fn vector_stem(file: &str) -> Option<&str> {
    file.strip_suffix(".cbor.hex")
        .or_else(|| file.strip_suffix(".json"))
}

/// With `QIAOMEN_WRITE_VECTORS=1`, (re)writes the files once, before any test reads them.
fn write_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("QIAOMEN_WRITE_VECTORS").is_ok_and(|v| v == "1") {
            write_vectors(&vectors());
        }
    });
}

// ---- the tests --------------------------------------------------------------------------------

#[test]
fn every_vector_matches_the_code() {
    write_if_asked();
    let all = vectors();
    let dir = vectors_dir();
    for v in &all {
        let ctx = |what: &str| format!("vector {}: {what}", v.name);
        let hex_text =
            fs::read_to_string(dir.join(format!("{}.cbor.hex", v.name))).unwrap_or_else(|e| {
                panic!(
                    "{}",
                    ctx(&format!(
                        "no .cbor.hex file ({e}); write the vectors with QIAOMEN_WRITE_VECTORS=1"
                    ))
                )
            });
        let bytes = unhex(&hex_text).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        let file: Json = serde_json::from_str(
            &fs::read_to_string(dir.join(format!("{}.json", v.name)))
                .unwrap_or_else(|e| panic!("{}", ctx(&format!("no .json file ({e})")))),
        )
        .unwrap_or_else(|e| panic!("{}", ctx(&format!("bad JSON: {e}"))));

        // The file names the message's type and itself.
        assert_eq!(file["name"], json!(v.name), "{}", ctx("name"));
        let type_name = file["type"].as_str().unwrap_or_default();
        assert_eq!(type_name, v.msg.type_name(), "{}", ctx("type"));

        // The CBOR decodes into the wire types as the message built here.
        let decoded = Msg::from_cbor(type_name, &bytes).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        assert_eq!(decoded, v.msg, "{}", ctx("CBOR decodes to another message"));
        // The readable form is the same message.
        let from_json =
            Msg::from_json(type_name, &file["message"]).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        assert_eq!(from_json, v.msg, "{}", ctx("JSON gives another message"));
        // Re-encoding gives the very same bytes.
        assert_eq!(
            hex(&decoded.cbor()),
            hex(&bytes),
            "{}",
            ctx("re-encoding differs")
        );
        // The file says exactly what the code says (readable form, diagnostic, notes).
        assert_eq!(file, file_json(v, &bytes), "{}", ctx("JSON file is stale"));
        // And through the whole wire encoding, zstd(CBOR).
        v.msg.check_wire_round_trip(&bytes);
    }
}

#[test]
fn every_file_in_the_vectors_folder_is_checked() {
    write_if_asked();
    let names: BTreeSet<String> = vectors().into_iter().map(|v| v.name).collect();
    // JSON-only vectors: the photo exchanges (checked here) and the journal entry (checked by
    // `qiaomen_protocol::journal`'s tests, which build it as a typed entry).
    let photos: BTreeSet<String> = photo_vectors()
        .into_iter()
        .map(|(n, _)| n)
        .chain(["journal-entry".to_string()])
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for entry in fs::read_dir(vectors_dir()).expect("proto-docs/vectors exists") {
        let file = entry.unwrap().file_name().to_string_lossy().to_string();
        if file == "README.md" {
            continue;
        }
        let stem = vector_stem(&file).unwrap_or_else(|| {
            panic!("proto-docs/vectors/{file} is neither a vector file nor README.md")
        });
        assert!(
            names.contains(stem) || (photos.contains(stem) && file.ends_with(".json")),
            "proto-docs/vectors/{file} belongs to no vector checked by protocol/tests/vectors.rs"
        );
        seen.insert(file);
    }
    for name in &names {
        for ext in ["cbor.hex", "json"] {
            assert!(
                seen.contains(&format!("{name}.{ext}")),
                "vector {name} has no {name}.{ext}"
            );
        }
    }
    for name in &photos {
        assert!(
            seen.contains(&format!("{name}.json")),
            "photo vector {name} has no {name}.json"
        );
    }
}

#[test]
fn the_photo_vectors_match_the_code() {
    write_if_asked();
    for (name, built) in photo_vectors() {
        let path = vectors_dir().join(format!("{name}.json"));
        let file: Json = serde_json::from_str(&fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("photo vector {name}: no file ({e}); write with QIAOMEN_WRITE_VECTORS=1")
        }))
        .unwrap_or_else(|e| panic!("photo vector {name}: bad JSON: {e}"));
        assert_eq!(file, built, "photo vector {name}: the file is stale");
    }
    // The reference's hash is the SHA-256 of the ASCII "qiaomen photo vector".
    let file = photo_reference_vector();
    assert_eq!(
        file["reference"]["hash"],
        json!("7b0c1579a0c8209ece1c6d70465ea2d76d6c088c479b9f78f65c5c1d824c24fb")
    );
    // The exchange holds together on its own, read from the file.
    let path = vectors_dir().join("photo-upload-exchange.json");
    let file: Json = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    check_exchange(&file).unwrap_or_else(|e| panic!("photo-upload-exchange: {e}"));
    assert_eq!(file["exchanges"].as_array().unwrap().len(), 5);
}

fn cbor_of(v: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn map(entries: Vec<(&str, Cbor)>) -> Cbor {
    Cbor::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Cbor::Text(k.into()), v))
            .collect(),
    )
}

fn request_from(v: &Cbor) -> Result<SyncRequest, WireError> {
    wire::decode_request(
        &zstd::bulk::compress(&cbor_of(v), 3).unwrap(),
        limits::MAX_DECODED_BYTES,
    )
}

fn response_from(v: &Cbor) -> Result<SyncResponse, WireError> {
    wire::decode(
        &zstd::bulk::compress(&cbor_of(v), 3).unwrap(),
        limits::MAX_DECODED_BYTES,
    )
}

/// What SYNC-v1.md says a receiver accepts beyond the canonical form.
#[test]
fn receivers_accept_absent_optional_keys_any_order_and_unknown_keys() {
    let idle_first = SyncRequest {
        response_budget: None,
        agent: None,
        table: vec![],
        base_ms: 0,
        pending: None,
        features: 0,
        extras_digest: None,
        scope_digest: None,
        cursor_check: None,
        version: 1,
        cursor: None,
        docs: vec![],
        grids: vec![],
        whole: None,
        journal: vec![],
        held_query: vec![],
    };
    // Only v: c, d and g take their defaults.
    assert_eq!(
        request_from(&map(vec![("v", 1.into())])).unwrap(),
        idle_first
    );
    // Any key order; unknown keys ignored.
    assert_eq!(
        request_from(&map(vec![
            ("x", "from a later minor revision".into()),
            ("c", 7.into()),
            ("v", 1.into()),
        ]))
        .unwrap(),
        SyncRequest {
            response_budget: None,
            agent: None,
            table: vec![],
            base_ms: 0,
            pending: None,
            features: 0,
            extras_digest: None,
            scope_digest: None,
            cursor: Some(7),
            ..idle_first.clone()
        }
    );
    // A response needs v, c and a; r, d and m have defaults.
    assert_eq!(
        response_from(&map(vec![
            ("a", 0.into()),
            ("c", 9.into()),
            ("v", 1.into())
        ]))
        .unwrap(),
        SyncResponse {
            features: 0,
            retire: None,
            rights: None,
            extras_digest: None,
            scope: None,
            cursor_check: None,
            version: 1,
            cursor: 9,
            accepted: 0,
            rejected: vec![],
            docs: vec![],
            more: false,
            whole: None,
            journal: vec![],
            held: None,
            table: vec![],
            base_ms: 0,
        }
    );
}

/// What SYNC-v1.md says a receiver refuses, with the error the server maps to a status.
#[test]
fn receivers_refuse_what_the_spec_forbids() {
    let a = id(HOUSEHOLD_A);
    let doc = |i: Cbor| {
        map(vec![
            ("v", 1.into()),
            ("c", Cbor::Null),
            (
                "d",
                Cbor::Array(vec![map(vec![("i", i), ("ch", Cbor::Array(vec![]))])]),
            ),
        ])
    };
    // An id is a 16-byte byte string...
    assert_eq!(
        request_from(&doc(Cbor::Bytes(a.as_bytes().to_vec())))
            .unwrap()
            .docs[0]
            .id,
        a
    );
    // ... not its text form, and not 15 bytes.
    assert_eq!(
        request_from(&doc(Cbor::Text(a.to_string()))),
        Err(WireError::Malformed)
    );
    assert_eq!(
        request_from(&doc(Cbor::Bytes(a.as_bytes()[..15].to_vec()))),
        Err(WireError::Malformed)
    );
    // v is required.
    assert_eq!(
        request_from(&map(vec![("c", 1.into())])),
        Err(WireError::Malformed)
    );
    // Another version, of a shape v1 can read, is named as such.
    assert_eq!(
        request_from(&map(vec![("v", 2.into())])),
        Err(WireError::UnsupportedVersion(2))
    );
    // A cursor is an unsigned integer of at most 64 bits: not negative, not text.
    assert_eq!(
        request_from(&map(vec![
            ("v", 1.into()),
            ("c", Cbor::Integer(u64::MAX.into()))
        ]))
        .unwrap()
        .cursor,
        Some(u64::MAX)
    );
    for bad in [Cbor::from(-1), Cbor::from("7")] {
        assert_eq!(
            request_from(&map(vec![("v", 1.into()), ("c", bad)])),
            Err(WireError::Malformed)
        );
    }
    // A duplicate key.
    assert_eq!(
        request_from(&map(vec![
            ("v", 1.into()),
            ("c", 1.into()),
            ("c", 2.into())
        ])),
        Err(WireError::Malformed)
    );
    // A response without its cursor.
    assert_eq!(
        response_from(&map(vec![("v", 1.into()), ("a", 0.into())])),
        Err(WireError::Malformed)
    );
    // An unknown reject code.
    assert_eq!(
        response_from(&map(vec![
            ("v", 1.into()),
            ("c", 1.into()),
            ("a", 0.into()),
            (
                "r",
                Cbor::Array(vec![map(vec![
                    ("i", Cbor::Bytes(a.as_bytes().to_vec())),
                    ("n", 0.into()),
                    ("h", Cbor::Bytes(vec![])),
                    ("k", "too_old".into()),
                ])])
            ),
        ])),
        Err(WireError::Malformed)
    );
    // Bare CBOR, not in a zstd frame.
    assert_eq!(
        wire::decode_request(&cbor_of(&map(vec![("v", 1.into())])), 1 << 20),
        Err(WireError::NotCompressed)
    );
}

/// The constants SYNC-v1.md states, so a change to one fails here until the spec follows.
#[test]
fn the_spec_states_the_codes_constants() {
    let spec =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto-docs/SYNC-v1.md"))
            .expect("proto-docs/SYNC-v1.md exists");
    assert!(spec.contains(&format!("`{CONTENT_TYPE}`")), "media type");
    assert!(
        spec.contains(&format!("`v` = {PROTOCOL_VERSION}")),
        "version"
    );
    for (name, value) in [
        ("MAX_BODY_BYTES", limits::MAX_BODY_BYTES),
        ("MAX_DECODED_BYTES", limits::MAX_DECODED_BYTES),
        ("MAX_DOCS", limits::MAX_DOCS),
        ("MAX_CHANGES", limits::MAX_CHANGES),
        ("MAX_CHANGE_BYTES", limits::MAX_CHANGE_BYTES),
        ("MAX_CHANGE_OPS", limits::MAX_CHANGE_OPS),
        ("MAX_REQUEST_OPS", limits::MAX_REQUEST_OPS),
        ("MAX_DOC_OPS", limits::MAX_DOC_OPS as usize),
        ("MAX_CONCURRENT_DECODES", limits::MAX_CONCURRENT_DECODES),
        ("CLIENT_CHUNK_BYTES", limits::CLIENT_CHUNK_BYTES),
        ("RESPONSE_BUDGET_BYTES", limits::RESPONSE_BUDGET_BYTES),
        (
            "MIN_RESPONSE_BUDGET_BYTES",
            limits::MIN_RESPONSE_BUDGET_BYTES,
        ),
    ] {
        assert!(
            spec.contains(&format!("| `{name}` | {value} |")),
            "SYNC-v1.md must state `{name}` = {value} in its limits table"
        );
    }
    // Field rules and limits (§13.8).
    for (name, value) in [
        ("MAX_NOTE_CHARS", validate::MAX_NOTE_CHARS),
        ("MAX_TEXT_CHARS", validate::MAX_TEXT_CHARS),
        ("MAX_NAME_CHARS", validate::MAX_NAME_CHARS),
        ("MAX_ADDRESS_CHARS", validate::MAX_ADDRESS_CHARS),
        ("MAX_DOOR_NUMBER_CHARS", validate::MAX_DOOR_NUMBER_CHARS),
        ("MAX_MEMBERS", validate::MAX_MEMBERS),
        ("MAX_VISITS_PER_DAY", validate::MAX_VISITS_PER_DAY),
    ] {
        assert!(
            spec.contains(&format!("| `{name}` | {value} |")),
            "SYNC-v1.md must state `{name}` = {value} in §13.8"
        );
    }
    // Photos (§12, §14).
    for (name, value) in [
        ("MAX_PHOTO_BYTES", photo::MAX_PHOTO_BYTES as usize),
        ("MAX_SUBJECT_PHOTOS", photo::MAX_SUBJECT_PHOTOS),
        (
            "MAX_VISIT_PHOTO_BYTES",
            photo::MAX_VISIT_PHOTO_BYTES as usize,
        ),
        ("MAX_CAPTION_CHARS", photo::MAX_CAPTION_CHARS),
        ("MAX_PHOTO_PIECE_BYTES", photo::MAX_PHOTO_PIECE_BYTES),
    ] {
        assert!(
            spec.contains(&format!("| `{name}` | {value} |")),
            "SYNC-v1.md must state `{name}` = {value} in its limits table"
        );
    }
    for code in [
        validate::Field::Photo.code(),
        validate::Field::PhotoCaption.code(),
        validate::Rule::MediaType.code(),
        "unknown_photo",
        "offset_mismatch",
        "hash_mismatch",
        "photo_quota",
        "application/offset+octet-stream",
        "photo:",
    ] {
        assert!(
            spec.contains(&format!("`{code}")),
            "SYNC-v1.md names `{code}`"
        );
    }
    assert!(spec.contains(&format!(
        "Bit {} (`FEATURE_FIELD_RULES`)",
        wire::FEATURE_FIELD_RULES
    )));
    assert!(spec.contains(&format!("The reference phone sends `{}`", wire::FEATURES)));
    // Packed changes (§4.4): the constants the layout names.
    use qiaomen_protocol::pack::{DEP_PREFIX, MAX_DEPS, MAX_OPS, PACKED_FORMAT};
    assert!(spec.contains(&format!("at most {MAX_DEPS} dependencies")));
    assert!(spec.contains(&format!("packed  = {PACKED_FORMAT:02x} checksum[4]")));
    assert!(spec.contains(&format!("dep[{DEP_PREFIX}]")));
    assert!(spec.contains(&format!("first {DEP_PREFIX} bytes of a dependency's hash")));
    let max_ops = format!("{},{:03}", MAX_OPS / 1000, MAX_OPS % 1000);
    assert!(spec.contains(&format!("at most {max_ops} operations")));
    assert!(spec.contains(&format!("Bit {} (`FEATURE_PACKED`)", wire::FEATURE_PACKED)));
    assert!(spec.contains(&format!("Bit {} (`FEATURE_RETIRE`)", wire::FEATURE_RETIRE)));
    assert!(spec.contains("`device_retired`"));
    for code in ALL_CODES {
        assert!(
            spec.contains(&format!("`{}`", code_name(code))),
            "reject code {}",
            code_name(code)
        );
    }
}

#[test]
fn the_packed_vector_rebuilds_the_automerge_vector_byte_for_byte() {
    let all = vectors();
    let find = |name: &str| {
        all.iter()
            .find(|v| v.name == name)
            .map(|v| match &v.msg {
                Msg::Request(r) => r.clone(),
                _ => panic!("{name} is a request"),
            })
            .expect("vector present")
    };
    let (packed, chunks) = (
        find("request-upload-packed"),
        find("request-upload-automerge"),
    );
    let mut rebuilt: Vec<automerge::Change> = Vec::new();
    for bytes in &packed.docs[0].changes {
        assert_eq!(bytes[0], qiaomen_protocol::pack::PACKED_FORMAT);
        let u = qiaomen_protocol::pack::unpack(bytes, &packed.table, packed.base_ms).unwrap();
        // Each dependency is found by its prefix among the changes before it.
        let deps = u
            .dep_prefixes()
            .iter()
            .map(|p| {
                rebuilt
                    .iter()
                    .map(automerge::Change::hash)
                    .find(|h| h.as_ref()[..p.len()] == p[..])
                    .expect("found")
            })
            .collect();
        rebuilt.push(u.build(deps).unwrap());
    }
    let raw: Vec<&[u8]> = chunks.docs[0]
        .changes
        .iter()
        .map(|c| c.as_slice())
        .collect();
    let got: Vec<&[u8]> = rebuilt.iter().map(|c| c.raw_bytes()).collect();
    assert_eq!(got, raw);
    // And smaller, before compression.
    let size = |r: &SyncRequest| r.docs[0].changes.iter().map(|c| c.len()).sum::<usize>();
    assert!(size(&packed) < size(&chunks));
}

#[test]
fn the_packed_response_rebuilds_the_second_change_among_what_the_phone_holds() {
    let all = vectors();
    let find = |name: &str| all.iter().find(|v| v.name == name).expect("vector present");
    let Msg::Response(down) = &find("response-packed").msg else {
        panic!("response-packed is a response");
    };
    let Msg::Request(chunks) = &find("request-upload-automerge").msg else {
        panic!("request-upload-automerge is a request");
    };
    assert_eq!(
        down.features & wire::FEATURE_PACKED_DOWN,
        wire::FEATURE_PACKED_DOWN
    );
    // The phone holds the first change; the second comes packed and rebuilds exactly.
    let mut phone = HouseholdDoc::load(&chunks.docs[0].changes[0]).unwrap();
    let bytes = &down.docs[0].changes[0];
    assert_eq!(bytes[0], pack::PACKED_FORMAT);
    let u = pack::unpack(bytes, &down.table, down.base_ms).unwrap();
    let options: Vec<_> = u
        .dep_prefixes()
        .iter()
        .map(|p| phone.hashes_with_prefix(p, false))
        .collect();
    assert_eq!(options, vec![phone.heads()]);
    let change = u.clone().build_among(&options).unwrap();
    assert_eq!(change.raw_bytes(), chunks.docs[0].changes[1].as_slice());
    // Smaller than the chunk it stands for, before compression.
    assert!(bytes.len() < chunks.docs[0].changes[1].len());
    // Without what it builds on, it does not rebuild.
    assert_eq!(
        u.build_among(&[vec![]]).unwrap_err(),
        pack::PackError::DependencyMismatch
    );
}
