//! Photos (SYNC-v1 §14): what a photo attached to a record is, and the rules both ends apply
//! to it, with no IO.
//!
//! A photo's bytes never enter the household document. They are kept beside the store by
//! their content hash (SHA-256, lower-case hex) and travel on their own, after the records
//! (`/v1/photos/{hash}`, resumable by offset). The document holds a [`Photo`] reference: hash,
//! size, media type, when it was taken, a caption, what it shows (a visit, one of its hazards
//! or disputes, a work-order step, the household itself) and who attached it.
//!
//! Each reference is a key of the document's root of its own, `photo:<id>` ([`root_key`]),
//! not an entry of a `photos` map: a map would be made by a household's first photo, and two
//! phones attaching first photos at once would each make one, of which Automerge shows only
//! one. A key per photo is written by one phone only, so no reference is ever hidden.

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{DemandId, DeviceId, PhotoId, UserId, VisitId};

/// The prefix of a photo reference's key at the document's root.
pub const ROOT_PREFIX: &str = "photo:";

/// The root key of the photo `id`'s reference.
pub fn root_key(id: &str) -> String {
    format!("{ROOT_PREFIX}{id}")
}

/// The most bytes one photo may have. The app compresses first (ffi/README.md: a long side of
/// 1600 px at JPEG quality 80 is ~300 KB); a photo over this is refused when it is attached.
pub const MAX_PHOTO_BYTES: u64 = 2 * 1024 * 1024;
/// The most photos one subject (a visit, a hazard, a step, ...) may hold.
pub const MAX_SUBJECT_PHOTOS: usize = 10;
/// The most bytes of photos one visit may hold, its hazards' and disputes' included.
pub const MAX_VISIT_PHOTO_BYTES: u64 = 8 * 1024 * 1024;
/// The longest caption, in characters.
pub const MAX_CAPTION_CHARS: usize = 200;
/// The most bytes one upload request (`PATCH /v1/photos/{hash}`) may carry.
pub const MAX_PHOTO_PIECE_BYTES: usize = 256 * 1024;

/// A photo's format, judged from its first bytes (never from what the app says it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaType {
    Jpeg,
    Png,
    Webp,
}

impl MediaType {
    /// The media type's name on the wire (`image/jpeg`, ...).
    pub fn mime(self) -> &'static str {
        match self {
            MediaType::Jpeg => "image/jpeg",
            MediaType::Png => "image/png",
            MediaType::Webp => "image/webp",
        }
    }

    /// The media type's stable code (`jpeg`, `png`, `webp`: its serde name), as the server's
    /// tables and the JSON API hold it.
    pub fn code(self) -> &'static str {
        match self {
            MediaType::Jpeg => "jpeg",
            MediaType::Png => "png",
            MediaType::Webp => "webp",
        }
    }

    /// The media type of a stable code ([`MediaType::code`]); `None` for any other text.
    pub fn from_code(code: &str) -> Option<MediaType> {
        match code {
            "jpeg" => Some(MediaType::Jpeg),
            "png" => Some(MediaType::Png),
            "webp" => Some(MediaType::Webp),
            _ => None,
        }
    }

    /// The format the bytes are in, from their signature; `None` for anything else.
    pub fn of_bytes(bytes: &[u8]) -> Option<MediaType> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(MediaType::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(MediaType::Png)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(MediaType::Webp)
        } else {
            None
        }
    }
}

/// What a photo shows: the record it is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Reconcile, Hydrate)]
pub enum PhotoSubject {
    /// The household itself (its door, its 便民服务卡).
    Household,
    /// A visit.
    Visit { visit: VisitId },
    /// A hazard noted on a visit: its place in the visit's `hazards`.
    Hazard { visit: VisitId, item: u32 },
    /// A dispute noted on a visit: its place in the visit's `disputes`.
    Dispute { visit: VisitId, item: u32 },
    /// A step of a demand's work order (e.g. the return visit): its place in the history.
    DemandStep { demand: DemandId, step: u32 },
}

impl PhotoSubject {
    /// The visit the photo counts against (for [`MAX_VISIT_PHOTO_BYTES`]), if any.
    pub fn visit(&self) -> Option<VisitId> {
        match self {
            PhotoSubject::Visit { visit }
            | PhotoSubject::Hazard { visit, .. }
            | PhotoSubject::Dispute { visit, .. } => Some(*visit),
            _ => None,
        }
    }

    /// The stable code of the subject's kind (`household`, `visit`, `hazard`, `dispute`,
    /// `demand_step`).
    pub fn code(&self) -> &'static str {
        match self {
            PhotoSubject::Household => "household",
            PhotoSubject::Visit { .. } => "visit",
            PhotoSubject::Hazard { .. } => "hazard",
            PhotoSubject::Dispute { .. } => "dispute",
            PhotoSubject::DemandStep { .. } => "demand_step",
        }
    }
}

/// A photo attached to a record: the reference the household document holds.
#[derive(Clone, Debug, PartialEq, Reconcile, Hydrate)]
pub struct Photo {
    pub id: PhotoId,
    /// SHA-256 of the photo's bytes, 64 lower-case hex characters.
    pub hash: String,
    pub size: u64,
    pub media_type: MediaType,
    /// When it was taken, by the phone's clock.
    pub taken_at_ms: i64,
    pub caption: String,
    pub subject: PhotoSubject,
    pub by: UserId,
    pub device: DeviceId,
}

/// A photo of a task report (周清单: a 防诈 poster put up): the reference the report holds on
/// the phone and on the server. Task reports are org work, not household records, so this
/// travels in the report's JSON (`POST /api/v1/tasks/{id}/done`), not in a document; its
/// bytes go by `/v1/photos/{hash}` like any photo's, once the server holds the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportPhoto {
    /// SHA-256 of the photo's bytes, 64 lower-case hex characters.
    pub hash: String,
    pub size: u64,
    pub media_type: MediaType,
    /// When it was taken, by the phone's clock.
    pub taken_at_ms: i64,
    #[serde(default)]
    pub caption: String,
}

/// SHA-256 of `bytes` as 64 lower-case hex characters: a photo's name everywhere.
pub fn hash_of(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Whether `s` is a photo hash as written: 64 lower-case hex characters.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An incremental SHA-256, for checking a photo that arrives in pieces.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of everything given, as [`hash_of`] writes it.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_media_types_code_is_its_serde_name_and_reads_back() {
        for m in [MediaType::Jpeg, MediaType::Png, MediaType::Webp] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.code());
            assert_eq!(MediaType::from_code(m.code()), Some(m));
        }
        assert_eq!(MediaType::from_code("gif"), None);
    }

    #[test]
    fn a_photo_is_named_by_the_sha256_of_its_bytes() {
        // FIPS 180-2's example "abc".
        assert_eq!(
            hash_of(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Hasher::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), hash_of(b"abc"));
        assert!(is_hash(&hash_of(b"")));
        assert!(!is_hash(&hash_of(b"").to_uppercase()));
        assert!(!is_hash("ab"));
    }

    #[test]
    fn the_format_is_judged_from_the_bytes() {
        assert_eq!(
            MediaType::of_bytes(&[0xFF, 0xD8, 0xFF, 0xE0, 0]),
            Some(MediaType::Jpeg)
        );
        assert_eq!(
            MediaType::of_bytes(b"\x89PNG\r\n\x1a\n...."),
            Some(MediaType::Png)
        );
        assert_eq!(
            MediaType::of_bytes(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(MediaType::Webp)
        );
        assert_eq!(MediaType::of_bytes(b"GIF89a"), None);
        assert_eq!(MediaType::of_bytes(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(MediaType::of_bytes(b""), None);
    }

    mod in_the_document {
        use automerge::{ROOT, ReadDoc, transaction::Transactable};

        use super::super::*;
        use crate::{
            DocError,
            doc::{Author, HouseholdDoc},
            ids::*,
            schema::*,
            validate::{Field, FieldError, Rule},
        };

        fn author() -> Author {
            Author {
                user: UserId::new(),
                device: DeviceId::new(),
            }
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
                note: autosurgeon::Text::with_value(""),
                demands_raised: vec![],
            }
        }

        fn photo(a: &Author, subject: PhotoSubject, size: u64) -> Photo {
            Photo {
                id: PhotoId::new(),
                hash: hash_of(PhotoId::new().as_bytes()),
                size,
                media_type: MediaType::Jpeg,
                taken_at_ms: 5,
                caption: "电线下垂".into(),
                subject,
                by: a.user,
                device: a.device,
            }
        }

        fn household(a: &Author) -> (HouseholdId, HouseholdDoc, VisitId) {
            let h = Household::new(HouseholdId::new(), GridId::new("g1"), "东村", "17");
            let mut doc = HouseholdDoc::create(&h, a, 1).unwrap();
            let v = visit(a);
            doc.add_visit(a, 2, &v, &[]).unwrap();
            (h.id, doc, v.id)
        }

        fn field(e: DocError) -> Option<FieldError> {
            match e {
                DocError::Field(f) => Some(f),
                _ => None,
            }
        }

        #[test]
        fn a_photo_is_attached_to_a_record_and_read_back_on_another_replica() {
            let a = author();
            let (id, mut doc, v) = household(&a);
            let on_hazard = photo(&a, PhotoSubject::Hazard { visit: v, item: 0 }, 300_000);
            let before = doc.heads();
            doc.attach_photo(&a, 3, &on_hazard).unwrap();
            assert_eq!(doc.photos(), vec![on_hazard.clone()]);
            // The server's check of the change passes, and another replica reads it.
            doc.validate_since(&before, id).unwrap();
            let mut other = HouseholdDoc::load(&doc.save()).unwrap();
            assert_eq!(
                other.photo(&on_hazard.id.to_string()).unwrap(),
                Some(on_hazard.clone())
            );
            // An edit of the household's facts keeps every reference.
            other
                .edit(&a, 4, |h| {
                    h.address = "西村".into();
                    Ok(())
                })
                .unwrap();
            assert_eq!(other.photos(), vec![on_hazard]);
            // Two phones attaching at once: both references are kept.
            let b = author();
            let mut one = HouseholdDoc::load(&doc.save()).unwrap();
            let mut two = HouseholdDoc::load(&doc.save()).unwrap();
            two.set_actor(crate::doc::actor_for(b.device));
            let p1 = photo(&a, PhotoSubject::Visit { visit: v }, 10);
            let p2 = photo(&b, PhotoSubject::Household, 10);
            one.attach_photo(&a, 5, &p1).unwrap();
            two.attach_photo(&b, 5, &p2).unwrap();
            one.merge(&mut two).unwrap();
            assert_eq!(one.photos().len(), 3);
        }

        #[test]
        fn attaching_refuses_what_breaks_a_rule_before_writing() {
            let a = author();
            let (_, mut doc, v) = household(&a);
            let heads = doc.heads();
            let refused = |doc: &mut HouseholdDoc, p: &Photo| {
                let e = doc.attach_photo(&a, 3, p).unwrap_err();
                field(e)
            };
            let too_big = photo(&a, PhotoSubject::Visit { visit: v }, MAX_PHOTO_BYTES + 1);
            assert_eq!(
                refused(&mut doc, &too_big),
                Some(FieldError {
                    field: Field::Photo,
                    rule: Rule::TooLarge
                })
            );
            let empty = photo(&a, PhotoSubject::Visit { visit: v }, 0);
            assert_eq!(
                refused(&mut doc, &empty),
                Some(FieldError {
                    field: Field::Photo,
                    rule: Rule::Empty
                })
            );
            let mut long = photo(&a, PhotoSubject::Visit { visit: v }, 10);
            long.caption = "字".repeat(MAX_CAPTION_CHARS + 1);
            assert_eq!(
                refused(&mut doc, &long),
                Some(FieldError {
                    field: Field::PhotoCaption,
                    rule: Rule::TooLong
                })
            );
            // A subject the household does not hold; a hash that is not one.
            for subject in [
                PhotoSubject::Visit {
                    visit: VisitId::new(),
                },
                PhotoSubject::Hazard { visit: v, item: 1 },
                PhotoSubject::Dispute { visit: v, item: 0 },
                PhotoSubject::DemandStep {
                    demand: DemandId::new(),
                    step: 0,
                },
            ] {
                let p = photo(&a, subject, 10);
                let got = doc.attach_photo(&a, 3, &p);
                assert!(matches!(got, Err(DocError::InvalidEdit(_))), "{got:?}");
            }
            let mut bad = photo(&a, PhotoSubject::Household, 10);
            bad.hash = "ABC".into();
            assert!(matches!(
                doc.attach_photo(&a, 3, &bad),
                Err(DocError::InvalidEdit(_))
            ));
            assert_eq!(doc.heads(), heads, "nothing refused was written");
            // Ten photos of one subject, then the eleventh; the bytes of one visit.
            for _ in 0..MAX_SUBJECT_PHOTOS {
                doc.attach_photo(&a, 3, &photo(&a, PhotoSubject::Visit { visit: v }, 10))
                    .unwrap();
            }
            assert_eq!(
                refused(&mut doc, &photo(&a, PhotoSubject::Visit { visit: v }, 10)),
                Some(FieldError {
                    field: Field::Photo,
                    rule: Rule::TooMany
                })
            );
            for _ in 0..3 {
                let p = photo(
                    &a,
                    PhotoSubject::Hazard { visit: v, item: 0 },
                    MAX_PHOTO_BYTES,
                );
                doc.attach_photo(&a, 3, &p).unwrap();
            }
            let over = photo(
                &a,
                PhotoSubject::Hazard { visit: v, item: 0 },
                MAX_PHOTO_BYTES,
            );
            assert_eq!(
                refused(&mut doc, &over),
                Some(FieldError {
                    field: Field::Photo,
                    rule: Rule::TooLarge
                })
            );
        }

        /// What the server judges of changes written past the typed edits.
        #[test]
        fn the_server_refuses_a_rewritten_or_broken_reference() {
            let a = author();
            let (id, mut doc, v) = household(&a);
            let p = photo(&a, PhotoSubject::Visit { visit: v }, 10);
            doc.attach_photo(&a, 3, &p).unwrap();
            let key = root_key(&p.id.to_string());
            type Case = (&'static str, Box<dyn Fn(&mut automerge::AutoCommit)>, bool);
            let k = key.clone();
            let k2 = key.clone();
            let cases: Vec<Case> = vec![
                (
                    "the caption",
                    Box::new(move |d| {
                        let (_, e) = d.get(ROOT, k.as_str()).unwrap().unwrap();
                        d.put(&e, "caption", "已整改").unwrap();
                    }),
                    true,
                ),
                (
                    "the hash rewritten",
                    Box::new(move |d| {
                        let (_, e) = d.get(ROOT, k2.as_str()).unwrap().unwrap();
                        d.put(&e, "hash", hash_of(b"other")).unwrap();
                    }),
                    false,
                ),
                (
                    "a new reference to a visit that is not there",
                    Box::new(move |d| {
                        let q = photo(
                            &a,
                            PhotoSubject::Visit {
                                visit: VisitId::new(),
                            },
                            10,
                        );
                        let k = root_key(&q.id.to_string());
                        autosurgeon::reconcile_prop(d, ROOT, k.as_str(), &q).unwrap();
                    }),
                    false,
                ),
                (
                    "a new reference under another id",
                    Box::new(move |d| {
                        let q = photo(&a, PhotoSubject::Visit { visit: v }, 10);
                        let k = root_key(&PhotoId::new().to_string());
                        autosurgeon::reconcile_prop(d, ROOT, k.as_str(), &q).unwrap();
                    }),
                    false,
                ),
                (
                    "a new reference over the size limit",
                    Box::new(move |d| {
                        let q = photo(&a, PhotoSubject::Visit { visit: v }, MAX_PHOTO_BYTES * 2);
                        let k = root_key(&q.id.to_string());
                        autosurgeon::reconcile_prop(d, ROOT, k.as_str(), &q).unwrap();
                    }),
                    false,
                ),
                (
                    "a reference that is not one",
                    Box::new(|d| {
                        d.put(ROOT, root_key(&PhotoId::new().to_string()).as_str(), "x")
                            .unwrap();
                    }),
                    false,
                ),
            ];
            for (what, change, ok) in cases {
                let mut copy = doc.clone();
                let before = copy.heads();
                change(copy.automerge_mut());
                copy.commit(&a, 4);
                let got = copy.validate_since(&before, id);
                assert_eq!(got.is_ok(), ok, "{what}: {got:?}");
            }
        }

        #[test]
        fn a_reference_written_or_removed_is_what_the_change_touched() {
            let a = author();
            let (_, mut doc, v) = household(&a);
            let p = photo(&a, PhotoSubject::Visit { visit: v }, 10);
            let before = doc.heads();
            doc.attach_photo(&a, 3, &p).unwrap();
            let touched = doc
                .validate_since(&before, doc.household_id().unwrap())
                .unwrap();
            assert!(
                touched
                    .entries
                    .contains(&("photos".to_string(), p.id.to_string()))
            );
            let before = doc.heads();
            doc.automerge_mut()
                .delete(ROOT, root_key(&p.id.to_string()).as_str())
                .unwrap();
            doc.commit(&a, 4);
            let touched = doc
                .validate_since(&before, doc.household_id().unwrap())
                .unwrap();
            assert!(
                touched
                    .deleted
                    .contains(&("photos".to_string(), p.id.to_string()))
            );
            assert!(doc.photos().is_empty());
        }
    }
}
