//! Schema migrations: each step takes a document of version `n` to `n + 1`.
//!
//! Version history:
//! - **1** (the field-trial layout): no `schema_version` key; a household that moved away was
//!   marked with a boolean `moved`, with no way to say it merged into another.
//! - **2**: `schema_version` at the root; `status` (`Active` / `Moved` / `Merged`) replaces
//!   `moved`.
//!
//! Rules for writing a step, because phones that were offline for months will run it on
//! their own copy, concurrently with each other:
//! - write **scalars only** at existing places, deterministically from what the document
//!   holds. Two phones running the same step write the same values, so their concurrent
//!   writes agree (the conflicts API ignores concurrent writes of equal values);
//! - never create a container (map, list, text) at a key that already exists in older
//!   documents: two phones creating it concurrently would each make their own, and only one
//!   would win the merge.

use automerge::{AutoCommit, ROOT, ReadDoc, ScalarValue, Value, transaction::Transactable};

use crate::error::{DocError, Result};

/// Upgrades `doc` in place from schema version `from` to [`crate::schema::SCHEMA_VERSION`],
/// without committing.
pub fn upgrade(doc: &mut AutoCommit, from: u64) -> Result<()> {
    let mut version = from;
    while version < crate::schema::SCHEMA_VERSION {
        match version {
            1 => v1_to_v2(doc)?,
            other => {
                return Err(DocError::Schema(format!(
                    "no migration from schema version {other}"
                )));
            }
        }
        version += 1;
    }
    Ok(())
}

fn v1_to_v2(doc: &mut AutoCommit) -> Result<()> {
    let moved = match doc.get(ROOT, "moved")? {
        Some((Value::Scalar(s), _)) => matches!(s.as_ref(), ScalarValue::Boolean(true)),
        _ => false,
    };
    if doc.get(ROOT, "status")?.is_none() {
        doc.put(ROOT, "status", if moved { "Moved" } else { "Active" })?;
    }
    if doc.get(ROOT, "moved")?.is_some() {
        doc.delete(ROOT, "moved")?;
    }
    doc.put(ROOT, "schema_version", ScalarValue::Uint(2))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        doc::{Author, HouseholdDoc},
        ids::*,
        schema::{Household, HouseholdStatus, SCHEMA_VERSION},
    };

    /// Writes a household as a version-1 document: the current record, minus
    /// `schema_version` and `status`, plus the old `moved` flag.
    fn v1_document(moved: bool) -> (Vec<u8>, Household) {
        let hh = Household::new(HouseholdId::new(), GridId::new("g1"), "东村", "7");
        let mut doc = AutoCommit::new();
        autosurgeon::reconcile(&mut doc, &hh).unwrap();
        doc.delete(ROOT, "schema_version").unwrap();
        doc.delete(ROOT, "status").unwrap();
        doc.put(ROOT, "moved", moved).unwrap();
        doc.commit();
        (doc.save(), hh)
    }

    fn author() -> Author {
        Author {
            user: UserId::new(),
            device: DeviceId::new(),
        }
    }

    #[test]
    fn a_version_1_document_reads_as_the_current_schema() {
        let (bytes, hh) = v1_document(true);
        let doc = HouseholdDoc::load(&bytes).unwrap();
        assert_eq!(doc.schema_version().unwrap(), 1);
        let read = doc.household().unwrap();
        assert_eq!(read.schema_version, SCHEMA_VERSION);
        assert_eq!(read.status, HouseholdStatus::Moved);
        assert_eq!(read.door_number, hh.door_number);
        // Reading does not change the stored document.
        assert_eq!(doc.schema_version().unwrap(), 1);
    }

    #[test]
    fn upgrade_persists_and_is_idempotent() {
        let (bytes, _) = v1_document(false);
        let mut doc = HouseholdDoc::load(&bytes).unwrap();
        assert!(doc.upgrade(&author(), 5).unwrap());
        assert!(!doc.upgrade(&author(), 6).unwrap());
        let reloaded = HouseholdDoc::load(&doc.save()).unwrap();
        assert_eq!(reloaded.schema_version().unwrap(), 2);
        assert_eq!(
            reloaded.household().unwrap().status,
            HouseholdStatus::Active
        );
        assert!(reloaded.automerge().get(ROOT, "moved").unwrap().is_none());
    }

    #[test]
    fn two_phones_upgrading_concurrently_agree_and_show_no_conflict() {
        let (bytes, _) = v1_document(true);
        let mut a = HouseholdDoc::load(&bytes).unwrap();
        let mut b = HouseholdDoc::load(&bytes).unwrap();
        a.upgrade(&author(), 10).unwrap();
        b.upgrade(&author(), 11).unwrap();
        a.merge(&mut b).unwrap();
        assert_eq!(a.household().unwrap().status, HouseholdStatus::Moved);
        assert_eq!(a.schema_version().unwrap(), 2);
        assert!(crate::conflicts::conflicts(&mut a).unwrap().is_empty());
    }

    #[test]
    fn a_document_from_a_newer_schema_is_refused_not_misread() {
        let hh = Household::new(HouseholdId::new(), GridId::new("g1"), "x", "1");
        let mut doc = AutoCommit::new();
        autosurgeon::reconcile(&mut doc, &hh).unwrap();
        doc.put(
            ROOT,
            "schema_version",
            ScalarValue::Uint(SCHEMA_VERSION + 1),
        )
        .unwrap();
        doc.commit();
        assert!(matches!(
            HouseholdDoc::load(&doc.save()),
            Err(DocError::TooNew { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }
}
