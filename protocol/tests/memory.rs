//! What a household document holds in memory after others' changes are applied to it: the
//! document, not a record of every character applied (automerge 0.12 records a text
//! insertion's patch even when no one asked for patches; `HouseholdDoc` drops them). Its own
//! test binary: the heap is counted by `dhat`'s allocator for the whole process.

use automerge::{AutoCommit, ROOT, transaction::Transactable};
use qiaomen_protocol::{
    doc::HouseholdDoc,
    ids::{DeviceId, GridId, HouseholdId, UserId},
    schema::Household,
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn applied_changes_do_not_leave_their_patches_in_memory() {
    let _profiler = dhat::Profiler::builder().testing().build();
    // A household, then 10 changes of 20,000 typed characters each from another device.
    let household = Household::new(HouseholdId::new(), GridId::new("g1"), "东村", "1");
    let author = qiaomen_protocol::doc::Author {
        user: UserId(uuid::Uuid::from_u128(1)),
        device: DeviceId(uuid::Uuid::from_u128(2)),
    };
    let mut created =
        HouseholdDoc::create(&household, &author, 1_763_000_000_000).expect("created");
    let bytes = created.save();
    let mut other = AutoCommit::load(&bytes).expect("loads");
    let mut changes = Vec::new();
    for k in 0..10 {
        let text = other
            .put_object(ROOT, format!("bulk{k}"), automerge::ObjType::Text)
            .expect("text");
        other
            .splice_text(&text, 0, 0, &"字".repeat(19_999))
            .expect("typed");
        other.commit();
        changes.push(
            other
                .get_last_local_change()
                .expect("a change")
                .raw_bytes()
                .to_vec(),
        );
    }
    let mut doc = HouseholdDoc::load(&bytes).expect("loads");
    drop((other, created, bytes));
    let before = dhat::HeapStats::get().curr_bytes;
    for c in &changes {
        doc.apply_changes([c.as_slice()]).expect("applied");
    }
    let held = dhat::HeapStats::get().curr_bytes - before;
    // 200,000 applied operations: the document itself takes a few MB; the patches
    // automerge would keep took ~200 bytes an operation more (~40 MB).
    assert!(
        held < 16 << 20,
        "the document holds {} MB after 200,000 applied operations",
        held >> 20
    );
    drop(doc);
}
