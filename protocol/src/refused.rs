//! What a refused change held, so that nothing a worker typed is lost without a trace.
//!
//! When the server refuses a change, the phone goes back to a history without it
//! ([`crate::doc::HouseholdDoc::without_changes`]). Before it does, it reads what the change
//! did — which visit, demand, member or field, with the words typed — into a
//! [`RefusedContent`], kept with the refusal's reason for the app to show and offer to enter
//! again. The server keeps the refused change's bytes and reads the same [`RefusedContent`]
//! from them for the grid's supervisors (SYNC-v1 §5.6).
//!
//! Sensitive values (ID-card and phone numbers) are never copied into it: a field is named,
//! not shown.

use automerge::{ChangeHash, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::{
    calendar::Day,
    doc::HouseholdDoc,
    error::{DocError, Result},
    ids::{DemandId, MemberId, ReviewId, VisitId},
    schema::{Demand, Member, NeedCategory, Review, Urgency, Visit, VisitOutcome},
};

/// A visit as a refused change wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefusedVisit {
    pub id: VisitId,
    pub visit_day: Day,
    pub outcome: VisitOutcome,
    pub started_at_ms: i64,
    pub note: String,
    /// The needs, disputes and hazards noted, as typed.
    pub needs: Vec<String>,
    pub disputes: Vec<String>,
    pub hazards: Vec<String>,
    pub demands_raised: Vec<DemandId>,
}

/// A demand as a refused change wrote it (raised, or moved on by a step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefusedDemand {
    pub id: DemandId,
    pub text: String,
    pub category: NeedCategory,
    pub urgency: Urgency,
    /// The comments of the steps the change added to its history, oldest first.
    pub steps: Vec<String>,
}

/// A tracked case as a refused change wrote it (raised, or moved on by a step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefusedCase {
    pub id: crate::ids::CaseId,
    /// `hazard` or `dispute` (the `ledger` vocabulary), and its kind's code.
    pub ledger: String,
    pub kind: String,
    pub detail: String,
    pub parties: String,
    /// The steps the change added (their action codes and comments), oldest first.
    pub steps: Vec<(String, String)>,
}

/// A member as a refused change wrote it: who, not their numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefusedMember {
    pub id: MemberId,
    pub name: String,
}

/// What one refused change did to its household.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RefusedContent {
    /// The change created the household.
    #[serde(default)]
    pub creates_household: bool,
    /// The household's own fields it set (`address`, `door_number`, `grid`, `status`, ...).
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub visits: Vec<RefusedVisit>,
    #[serde(default)]
    pub demands: Vec<RefusedDemand>,
    #[serde(default)]
    pub members: Vec<RefusedMember>,
    #[serde(default)]
    pub reviews: Vec<ReviewId>,
    /// Tracked disputes and hazards it raised or took steps of (SYNC-v1 §13.10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<RefusedCase>,
    /// Entries it deleted, as `collection/id` (`visits/…`, `members/…`).
    #[serde(default)]
    pub deleted: Vec<String>,
}

impl RefusedContent {
    /// Whether the change held anything a person typed or chose.
    pub fn is_empty(&self) -> bool {
        *self == RefusedContent::default()
    }
}

impl HouseholdDoc {
    /// What the change `hash`, which this document holds, did on top of the version it was
    /// made on. Entries that do not read through their types are named by what is left out.
    pub fn refused_content(&mut self, hash: &ChangeHash) -> Result<RefusedContent> {
        let doc = self.automerge_mut();
        let change = doc.get_change_by_hash(hash).ok_or(DocError::NotFound {
            kind: "change",
            id: hash.to_string(),
        })?;
        let before = change.deps().to_vec();
        let after = [*hash];
        let mut out = RefusedContent {
            creates_household: before.is_empty(),
            ..RefusedContent::default()
        };
        let patches = doc.diff(&before, &after);
        let doc = &*doc;
        // What it touched, sorted as validation sorts it (`doc::classify`).
        let touched = crate::doc::classify(&patches, before.is_empty()).touched;
        out.fields = touched
            .facts
            .into_iter()
            .filter(|k| k != "schema_version" && k != "id")
            .collect();
        out.deleted = touched
            .deleted
            .into_iter()
            .map(|(c, k)| format!("{c}/{k}"))
            .collect();
        let entries = touched.entries;
        if entries.is_empty() {
            return Ok(out);
        }
        let version = {
            let mut copy = doc.clone();
            copy.fork_at(&after).map_err(|_| DocError::NotFound {
                kind: "version",
                id: hash.to_string(),
            })?
        };
        let old = {
            let mut copy = doc.clone();
            (!before.is_empty())
                .then(|| copy.fork_at(&before).ok())
                .flatten()
        };
        for (collection, key) in entries {
            if collection == "cases" {
                use crate::vocab::Term;
                let root = crate::ledger::root_key(&key);
                let read = |d: &automerge::AutoCommit| {
                    autosurgeon::hydrate_prop::<_, Option<crate::ledger::Case>, _, _>(
                        d,
                        automerge::ROOT,
                        root.as_str(),
                    )
                    .ok()
                    .flatten()
                };
                if let Some(c) = read(&version) {
                    let known = old.as_ref().and_then(read).map_or(0, |b| b.history.len());
                    out.cases.push(RefusedCase {
                        id: c.id,
                        ledger: c.kind.ledger().code().to_string(),
                        kind: c.kind.kind_code().to_string(),
                        detail: c.detail,
                        parties: c.parties,
                        steps: c
                            .history
                            .into_iter()
                            .skip(known)
                            .map(|s| (s.action.code().to_string(), s.comment))
                            .collect(),
                    });
                }
                continue;
            }
            let Ok(Some((_, obj))) = version.get(automerge::ROOT, collection.as_str()) else {
                continue;
            };
            match collection.as_str() {
                "visits" => {
                    if let Ok(v) =
                        autosurgeon::hydrate_prop::<_, Visit, _, _>(&version, &obj, key.as_str())
                    {
                        out.visits.push(RefusedVisit {
                            id: v.id,
                            visit_day: v.visit_day,
                            outcome: v.outcome,
                            started_at_ms: v.started_at_ms,
                            note: v.note.as_str().to_string(),
                            needs: v.needs.into_iter().map(|n| n.detail).collect(),
                            disputes: v.disputes.into_iter().map(|n| n.detail).collect(),
                            hazards: v.hazards.into_iter().map(|n| n.detail).collect(),
                            demands_raised: v.demands_raised,
                        });
                    }
                }
                "demands" => {
                    if let Ok(d) =
                        autosurgeon::hydrate_prop::<_, Demand, _, _>(&version, &obj, key.as_str())
                    {
                        let known = old
                            .as_ref()
                            .and_then(|o| {
                                let (_, o_obj) = o.get(automerge::ROOT, "demands").ok()??;
                                autosurgeon::hydrate_prop::<_, Demand, _, _>(
                                    o,
                                    &o_obj,
                                    key.as_str(),
                                )
                                .ok()
                            })
                            .map_or(0, |b| b.history.len());
                        out.demands.push(RefusedDemand {
                            id: d.id,
                            text: d.text,
                            category: d.category,
                            urgency: d.urgency,
                            steps: d
                                .history
                                .into_iter()
                                .skip(known)
                                .map(|t| t.comment)
                                .collect(),
                        });
                    }
                }
                "members" => {
                    if let Ok(m) =
                        autosurgeon::hydrate_prop::<_, Member, _, _>(&version, &obj, key.as_str())
                    {
                        out.members.push(RefusedMember {
                            id: m.id,
                            name: m.name,
                        });
                    }
                }
                _ => {
                    if let Ok(r) =
                        autosurgeon::hydrate_prop::<_, Review, _, _>(&version, &obj, key.as_str())
                    {
                        out.reviews.push(r.id);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What a kept refused change (`change`, its bytes) did to its household, read on a copy of
/// the household as stored (`stored`; `None` when the change was to create it). Never
/// changes what is stored; a change whose base is not there reads as an error.
pub fn content_of(stored: Option<&[u8]>, change: &[u8]) -> Result<RefusedContent> {
    crate::doc::guarded(|| {
        let decoded = crate::doc::decode_changes([change])?;
        let hash = decoded
            .first()
            .map(|c| c.hash())
            .ok_or(DocError::NotFound {
                kind: "change",
                id: String::new(),
            })?;
        let mut doc = match stored {
            Some(bytes) => {
                let mut doc = HouseholdDoc::load(bytes)?;
                doc.apply_decoded(decoded)?;
                doc
            }
            None => HouseholdDoc::load(change)?,
        };
        doc.refused_content(&hash)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        doc::Author,
        ids::{GridId, HouseholdId, UserId},
        schema::{Household, Need},
    };

    #[test]
    fn a_refused_visit_is_read_back_with_its_words_and_nothing_else() {
        let author = Author {
            user: UserId::new(),
            device: crate::ids::DeviceId::new(),
        };
        let hh = Household::new(HouseholdId::new(), GridId::new("g1"), "东村 3 组", "12");
        let mut doc = HouseholdDoc::create(&hh, &author, 1_000).unwrap();
        let created = doc.heads();
        let visit_id = VisitId::new();
        let day: Day = "2026-12-15".parse().unwrap();
        let (_, hash) = doc
            .edit(&author, 2_000, |h| {
                h.visits.insert(
                    visit_id,
                    Visit {
                        id: visit_id,
                        visit_day: day,
                        worker: author.user,
                        device: author.device,
                        started_at_ms: 2_000,
                        ended_at_ms: None,
                        gps: None,
                        outcome: VisitOutcome::Met,
                        people_met: vec![],
                        needs: vec![Need {
                            category: NeedCategory::Housing,
                            detail: "屋顶漏雨".into(),
                        }],
                        disputes: vec![],
                        hazards: vec![],
                        publicity: vec![],
                        note: autosurgeon::Text::with_value("老人独居，腿脚不便"),
                        demands_raised: vec![],
                    },
                );
                Ok(())
            })
            .unwrap();
        let hash = hash.unwrap();
        let content = doc.refused_content(&hash).unwrap();
        assert!(!content.creates_household);
        assert!(content.fields.is_empty(), "{:?}", content.fields);
        assert_eq!(content.visits.len(), 1);
        let v = &content.visits[0];
        assert_eq!(
            (v.id, v.visit_day, v.outcome),
            (visit_id, day, VisitOutcome::Met)
        );
        assert_eq!(v.note, "老人独居，腿脚不便");
        assert_eq!(v.needs, vec!["屋顶漏雨".to_string()]);
        // The creation names the household's fields.
        let created = doc.refused_content(&created[0]).unwrap();
        assert!(created.creates_household);
        assert!(created.fields.contains(&"address".to_string()));
        assert!(created.visits.is_empty());
        // A round trip through JSON (how phone and server keep it) is exact.
        let json = serde_json::to_string(&content).unwrap();
        assert_eq!(
            serde_json::from_str::<RefusedContent>(&json).unwrap(),
            content
        );
    }
}
