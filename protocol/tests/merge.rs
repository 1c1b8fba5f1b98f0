//! Two phones editing one household offline, then merging.

mod common;

use common::*;
use qiaomen_protocol::{
    DocError,
    conflicts::{self, Resolution},
    doc::HouseholdDoc,
    ids::*,
    schema::*,
    workorder::{Deadlines, DemandAction, NewStep},
};

fn two_phones() -> (
    HouseholdDoc,
    HouseholdDoc,
    qiaomen_protocol::doc::Author,
    qiaomen_protocol::doc::Author,
) {
    let (a, b) = (author(), author());
    let mut doc_a = HouseholdDoc::create(&household(), &a, 1_000).unwrap();
    let doc_b = HouseholdDoc::load(&doc_a.save()).unwrap();
    (doc_a, doc_b, a, b)
}

#[test]
fn visits_added_offline_on_two_phones_are_both_there_after_merge() {
    let (mut pa, mut pb, a, b) = two_phones();
    let va = visit(&a, "2026-11-15", "见到户主");
    let vb = visit(&b, "2026-11-15", "补访");
    pa.add_visit(&a, 2_000, &va, &[]).unwrap();
    pb.add_visit(&b, 2_001, &vb, &[]).unwrap();
    pa.merge(&mut pb).unwrap();
    pb.merge(&mut pa).unwrap();
    let (ha, hb) = (pa.household().unwrap(), pb.household().unwrap());
    assert_eq!(ha, hb);
    assert_eq!(ha.visits.len(), 2);
    assert_eq!(ha.visits[&va.id], va);
    assert_eq!(ha.visits[&vb.id], vb);
    assert_eq!(pa.heads(), pb.heads());
}

#[test]
fn concurrent_values_of_one_field_are_all_shown_with_author_and_time_until_resolved() {
    let (mut pa, mut pb, a, b) = two_phones();
    pa.edit(&a, 5_000, |h| {
        h.door_number = "17A".into();
        Ok(())
    })
    .unwrap();
    pb.edit(&b, 6_000, |h| {
        h.door_number = "17B".into();
        Ok(())
    })
    .unwrap();
    pa.merge(&mut pb).unwrap();

    let found = conflicts::conflicts(&mut pa).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let c = &found[0];
    assert_eq!(c.path, vec!["door_number".to_string()]);
    let mut seen: Vec<_> = c
        .values
        .iter()
        .map(|v| {
            (
                v.value.as_str().unwrap().to_string(),
                v.author.unwrap(),
                v.at_ms,
            )
        })
        .collect();
    seen.sort_by_key(|s| s.0.clone());
    assert_eq!(
        seen,
        vec![("17A".into(), a, 5_000), ("17B".into(), b, 6_000)]
    );
    // The record shows Automerge's winner, the first listed value.
    assert_eq!(
        pa.household().unwrap().door_number,
        c.values[0].value.as_str().unwrap()
    );

    // A supervisor keeps phone A's value: the conflict is gone and the choice is theirs.
    let sup = author();
    let pick = c
        .values
        .iter()
        .find(|v| v.author == Some(a))
        .unwrap()
        .op
        .clone();
    conflicts::resolve(&mut pa, &sup, 7_000, &c.path, Resolution::Choose(pick)).unwrap();
    assert!(conflicts::conflicts(&mut pa).unwrap().is_empty());
    assert_eq!(pa.household().unwrap().door_number, "17A");
    let prov = conflicts::provenance(&mut pa, &c.path).unwrap();
    assert_eq!(prov.len(), 1);
    assert_eq!(prov[0].value, serde_json::json!("17A"));
    // Choosing the value Automerge already showed keeps its original author; choosing the
    // other one makes the supervisor its author.
    assert!(prov[0].author == Some(a) || prov[0].author == Some(sup));

    // The resolution reaches phone B and settles it there too.
    pb.merge(&mut pa).unwrap();
    assert!(conflicts::conflicts(&mut pb).unwrap().is_empty());
    assert_eq!(pb.household().unwrap().door_number, "17A");
}

#[test]
fn a_later_plain_edit_also_resolves_a_conflict() {
    let (mut pa, mut pb, a, b) = two_phones();
    let member = *pa.household().unwrap().members.keys().next().unwrap();
    pa.edit(&a, 5_000, |h| {
        h.members.get_mut(&member).unwrap().phone = Some(Sensitive::new("13900000001"));
        Ok(())
    })
    .unwrap();
    pb.edit(&b, 5_001, |h| {
        h.members.get_mut(&member).unwrap().phone = Some(Sensitive::new("13900000002"));
        Ok(())
    })
    .unwrap();
    pa.merge(&mut pb).unwrap();
    let found = conflicts::conflicts(&mut pa).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].path,
        vec!["members".to_string(), member.to_string(), "phone".into()]
    );
    // Conflict values never reach Debug output.
    assert!(!format!("{found:?}").contains("1390000000"));
    pa.edit(&a, 9_000, |h| {
        h.members.get_mut(&member).unwrap().phone = Some(Sensitive::new("13900000003"));
        Ok(())
    })
    .unwrap();
    assert!(conflicts::conflicts(&mut pa).unwrap().is_empty());
}

#[test]
fn a_resolution_that_does_not_fit_the_record_is_refused_and_writes_nothing() {
    let (mut pa, _, a, _) = two_phones();
    let heads = pa.heads();
    let err = conflicts::resolve(
        &mut pa,
        &a,
        1,
        &["status".into()],
        Resolution::Set(serde_json::json!(42)),
    );
    assert!(matches!(err, Err(DocError::InvalidEdit(_))), "{err:?}");
    let err = conflicts::resolve(
        &mut pa,
        &a,
        1,
        &["nope".into(), "x".into()],
        Resolution::Set(serde_json::json!(1)),
    );
    assert!(matches!(err, Err(DocError::NotFound { .. })));
    assert_eq!(pa.heads(), heads);
}

#[test]
fn notes_edited_concurrently_merge_as_text() {
    let (mut pa, mut pb, a, b) = two_phones();
    let v = visit(&a, "2026-11-30", "老人身体还好");
    pa.add_visit(&a, 2_000, &v, &[]).unwrap();
    pb.merge(&mut pa).unwrap();
    // Phone A prepends, phone B appends, offline.
    pa.splice_note(&a, 3_000, v.id, 0, 0, "【复查】").unwrap();
    let len = "老人身体还好".chars().count();
    pb.splice_note(&b, 3_001, v.id, len, 0, ",需送药").unwrap();
    pa.merge(&mut pb).unwrap();
    pb.merge(&mut pa).unwrap();
    let note = pa.household().unwrap().visits[&v.id]
        .note
        .as_str()
        .to_string();
    assert_eq!(note, "【复查】老人身体还好,需送药");
    assert_eq!(pb.household().unwrap().visits[&v.id].note.as_str(), note);
    assert!(conflicts::conflicts(&mut pa).unwrap().is_empty());
}

#[test]
fn demand_history_is_appended_and_illegal_steps_refused() {
    let (mut pa, _, a, _) = two_phones();
    let mut v = visit(&a, "2026-11-15", "");
    let d = Demand {
        id: DemandId::new(),
        raised_on_visit: Some(v.id),
        raised_by: a.user,
        raised_at_ms: 10,
        category: NeedCategory::Housing,
        text: "屋顶漏雨".into(),
        urgency: Urgency::Urgent,
        status: DemandStatus::Raised,
        history: vec![],
        first_responsible: None,
        source: Some(DemandSource::Visit),
        external_ref: None,
    };
    v.demands_raised.push(d.id);
    pa.add_visit(&a, 10, &v, std::slice::from_ref(&d)).unwrap();
    let heads = pa.heads();
    let rules = Deadlines::default();
    assert!(matches!(
        pa.demand_step(&a, 11, d.id, &NewStep::new(DemandAction::Close, ""), &rules),
        Err(DocError::InvalidEdit(_))
    ));
    assert_eq!(pa.heads(), heads, "a refused step writes nothing");
    pa.demand_step(
        &a,
        12,
        d.id,
        &NewStep::new(DemandAction::Take, "已联系村委"),
        &rules,
    )
    .unwrap();
    pa.demand_step(
        &a,
        13,
        d.id,
        &NewStep::new(DemandAction::Finish, "已修好"),
        &rules,
    )
    .unwrap();
    let got = &pa.household().unwrap().demands[&d.id];
    assert_eq!(got.status, DemandStatus::Done);
    let steps: Vec<_> = got
        .history
        .iter()
        .map(|t| (t.from, t.to, t.at_ms))
        .collect();
    assert_eq!(
        steps,
        vec![
            (DemandStatus::Raised, DemandStatus::Handling, 12),
            (DemandStatus::Handling, DemandStatus::Done, 13)
        ]
    );
}

#[test]
fn a_visit_must_belong_to_a_visit_day() {
    let (mut pa, _, a, _) = two_phones();
    let v = visit(&a, "2026-11-16", "");
    assert!(matches!(
        pa.add_visit(&a, 1, &v, &[]),
        Err(DocError::InvalidEdit(_))
    ));
    assert!(pa.household().unwrap().visits.is_empty());
}

#[test]
fn truncated_or_corrupted_bytes_give_a_typed_error_never_a_panic() {
    let (mut pa, _, a, _) = two_phones();
    pa.add_visit(&a, 2, &visit(&a, "2026-11-15", "x"), &[])
        .unwrap();
    let bytes = pa.save();
    for cut in [0, 1, 7, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            matches!(HouseholdDoc::load(&bytes[..cut]), Err(DocError::Corrupt)),
            "cut at {cut}"
        );
    }
    for i in (0..bytes.len()).step_by(7) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x5a;
        // Either a typed error, or (if the flip hit a byte Automerge does not check) a
        // document that still reads; never a panic.
        if let Ok(doc) = HouseholdDoc::load(&bad) {
            let _ = doc.household();
        }
    }
    let mut change = pa.changes_since(&[]).pop().unwrap();
    change.truncate(change.len() - 3);
    let heads = pa.heads();
    assert!(matches!(
        pa.apply_changes([change.as_slice()]),
        Err(DocError::Corrupt)
    ));
    assert_eq!(pa.heads(), heads);
}

#[test]
fn an_older_version_is_readable_by_its_heads() {
    let (mut pa, _, a, _) = two_phones();
    let before = pa.heads();
    pa.add_visit(&a, 2, &visit(&a, "2026-11-15", "x"), &[])
        .unwrap();
    assert!(pa.household_at(&before).unwrap().visits.is_empty());
    assert_eq!(pa.household().unwrap().visits.len(), 1);
}
