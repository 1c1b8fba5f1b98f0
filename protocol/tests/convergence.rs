//! Replicas of one household editing offline and exchanging changes over a lossy,
//! duplicating, reordering network always end up with the same document: a property test in
//! the style of automerge's own.
//!
//! Each case starts K replicas (2..=4) from one saved base document, runs a random script of
//! local edits and network steps, then lets every replica send everything to every other and
//! checks that they agree exactly (heads, typed record, conflicts) and that nothing written
//! anywhere was lost.
//!
//! Every id, replica actor and timestamp is derived from counters (only the base document's
//! creating actor is random), so a failing case replays the same way from its persisted seed
//! (proptest-regressions/convergence.txt).

use std::collections::BTreeMap;

use autosurgeon::Text;
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, FileFailurePersistence},
};
use qiaomen_protocol::{
    ActorId, ChangeHash, DocError,
    calendar::{Day, visit_days_of_month},
    conflicts::{self, Conflict},
    doc::{Author, HouseholdDoc},
    ids::*,
    schema::*,
    workorder::{Deadlines, DemandAction, NewStep, replay},
};
use uuid::Uuid;

const DOOR_NUMBERS: [&str; 5] = ["17", "17A", "17B", "18", "17-1"];
const ADDRESSES: [&str; 4] = ["东村三组", "东村四组", "西村一组", "East Village 3"];
const PHONES: [Option<&str>; 3] = [None, Some("13812345678"), Some("13900000001")];
const STATUSES: [HouseholdStatus; 3] = [
    HouseholdStatus::Active,
    HouseholdStatus::Moved,
    HouseholdStatus::Merged,
];
const NAMES: [&str; 4] = ["王建国", "李秀英", "王小明", "Zhang Wei"];
const RELATIONS: [Relation; 9] = [
    Relation::Head,
    Relation::Spouse,
    Relation::Child,
    Relation::Parent,
    Relation::Grandchild,
    Relation::Grandparent,
    Relation::Sibling,
    Relation::ChildInLaw,
    Relation::Other,
];
/// Notes and inserts mix CJK, ASCII and astral-plane characters, so splice positions counted
/// in the wrong unit would show.
const NOTES: [&str; 5] = ["", "见到户主", "老人身体还好", "nobody home", "🏠 门锁了"];
const INSERTS: [&str; 5] = ["x", "【复查】", ",需送药", "🙂", "\n"];
/// Every step of a work order, with all the data any step needs.
fn demand_step(i: usize) -> NewStep<'static> {
    NewStep {
        action: DemandAction::ALL[i],
        comment: "跟进",
        tier: None,
        unit: Some("team-1"),
        satisfaction: Some(Satisfaction::Basically),
        extend_days: Some(2),
    }
}

/// What the network does with a message taken from the queue.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Lost.
    Drop,
    /// Applied once.
    Deliver,
    /// Applied twice in a row.
    DeliverTwice,
    /// Applied once, and a copy stays in the queue to arrive again later (maybe elsewhere).
    Duplicate,
    /// Applied without one of its changes (a partial upload); later changes that depend on
    /// the lost one must wait inside the receiving document.
    LoseOne(Index),
}

/// One step of a script. Replicas, members, visits and demands are picked with [`Index`], so
/// a step means something whatever K is and whatever the replica holds.
#[derive(Clone, Debug)]
enum Op {
    SetDoorNumber {
        at: Index,
        value: usize,
    },
    SetAddress {
        at: Index,
        value: usize,
    },
    /// The household's phone, or (with `member`) a member's.
    SetPhone {
        at: Index,
        member: Option<Index>,
        value: usize,
    },
    SetStatus {
        at: Index,
        value: usize,
    },
    AddMember {
        at: Index,
        relation: usize,
        name: usize,
    },
    /// A key-group tag on the household, or (with `member`) on a member.
    AddTag {
        at: Index,
        member: Option<Index>,
        group: usize,
        since_days: u16,
    },
    AddVisit {
        at: Index,
        year: i32,
        month: u8,
        second_visit_day: bool,
        note: usize,
        demands: usize,
    },
    SpliceNote {
        at: Index,
        visit: Index,
        pos: Index,
        delete: usize,
        insert: usize,
    },
    /// Tried whether or not the step is allowed; a refused step must write nothing.
    TransitionDemand {
        at: Index,
        demand: Index,
        to: usize,
    },
    /// The app restarts: the replica is saved, loaded again and keeps its actor. Changes it
    /// was holding back for missing dependencies are lost with the old process.
    Restart {
        at: Index,
    },
    /// The replica queues a message with all its changes, or only those since its last send.
    Send {
        from: Index,
        everything: bool,
    },
    /// A queued message (the oldest, or with `reorder` any) reaches a replica, its changes
    /// possibly in reverse order, in one batch or (`one_by_one`) one `apply_changes` each.
    Deliver {
        pick: Index,
        reorder: bool,
        to: Index,
        fate: Fate,
        reversed: bool,
        one_by_one: bool,
    },
    /// Two replicas sync directly.
    Merge {
        into: Index,
        from: Index,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let fate = prop_oneof![
        1 => Just(Fate::Drop),
        2 => Just(Fate::Deliver),
        1 => Just(Fate::DeliverTwice),
        1 => Just(Fate::Duplicate),
        2 => any::<Index>().prop_map(Fate::LoseOne),
    ];
    prop_oneof![
        2 => (any::<Index>(), 0..DOOR_NUMBERS.len())
            .prop_map(|(at, value)| Op::SetDoorNumber { at, value }),
        1 => (any::<Index>(), 0..ADDRESSES.len())
            .prop_map(|(at, value)| Op::SetAddress { at, value }),
        2 => (any::<Index>(), proptest::option::of(any::<Index>()), 0..PHONES.len())
            .prop_map(|(at, member, value)| Op::SetPhone { at, member, value }),
        1 => (any::<Index>(), 0..STATUSES.len())
            .prop_map(|(at, value)| Op::SetStatus { at, value }),
        1 => (any::<Index>(), 0..RELATIONS.len(), 0..NAMES.len())
            .prop_map(|(at, relation, name)| Op::AddMember { at, relation, name }),
        1 => (
            any::<Index>(),
            proptest::option::of(any::<Index>()),
            0..KeyGroup::ALL.len(),
            0u16..800,
        )
            .prop_map(|(at, member, group, since_days)| Op::AddTag {
                at,
                member,
                group,
                since_days,
            }),
        2 => (
            any::<Index>(),
            2025i32..=2028,
            1u8..=12,
            any::<bool>(),
            0..NOTES.len(),
            0usize..=2,
        )
            .prop_map(|(at, year, month, second_visit_day, note, demands)| Op::AddVisit {
                at,
                year,
                month,
                second_visit_day,
                note,
                demands,
            }),
        3 => (
            any::<Index>(),
            any::<Index>(),
            any::<Index>(),
            0usize..=3,
            0..INSERTS.len(),
        )
            .prop_map(|(at, visit, pos, delete, insert)| Op::SpliceNote {
                at,
                visit,
                pos,
                delete,
                insert,
            }),
        3 => (any::<Index>(), any::<Index>(), 0..DemandAction::ALL.len())
            .prop_map(|(at, demand, to)| Op::TransitionDemand { at, demand, to }),
        1 => any::<Index>().prop_map(|at| Op::Restart { at }),
        6 => (any::<Index>(), proptest::bool::weighted(0.3))
            .prop_map(|(from, everything)| Op::Send { from, everything }),
        9 => (
            any::<Index>(),
            proptest::bool::weighted(0.75),
            any::<Index>(),
            fate,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(pick, reorder, to, fate, reversed, one_by_one)| Op::Deliver {
                pick,
                reorder,
                to,
                fate,
                reversed,
                one_by_one,
            }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(into, from)| Op::Merge { into, from }),
    ]
}

/// A change set in flight.
struct Message {
    changes: Vec<Vec<u8>>,
}

struct Replica {
    doc: HouseholdDoc,
    actor: ActorId,
    author: Author,
    /// Heads at this replica's last `Send`, for incremental sends.
    last_sent: Vec<ChangeHash>,
}

/// What the script wrote successfully somewhere; all of it must be on every replica at the end.
#[derive(Default)]
struct Written {
    members: Vec<MemberId>,
    visits: Vec<VisitId>,
    /// Demand → number of successful transitions (each appends one history entry).
    transitions: BTreeMap<DemandId, usize>,
    tags: usize,
}

struct World {
    replicas: Vec<Replica>,
    queue: Vec<Message>,
    written: Written,
    now_ms: i64,
    next_id: u128,
}

fn check<T>(what: &str, r: qiaomen_protocol::Result<T>) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

/// The `i`-th of `n` keys of a map, if it has any.
fn nth_key<K: Copy, V>(map: &BTreeMap<K, V>, i: Index) -> Option<K> {
    (!map.is_empty()).then(|| *map.keys().nth(i.index(map.len())).expect("in range"))
}

impl World {
    fn new(k: usize) -> Result<Self, TestCaseError> {
        let mut w = World {
            replicas: Vec::new(),
            queue: Vec::new(),
            written: Written::default(),
            now_ms: 1_763_000_000_000,
            next_id: 0,
        };
        let creator = Author {
            user: UserId(w.uuid()),
            device: DeviceId(w.uuid()),
        };
        let mut hh = Household::new(
            HouseholdId(w.uuid()),
            GridId::new("dongcun-03"),
            ADDRESSES[0],
            DOOR_NUMBERS[0],
        );
        let head = Member {
            id: MemberId(w.uuid()),
            relation: Relation::Head,
            name: NAMES[0].into(),
            id_number: Some(Sensitive::new("410108195001011234")),
            birth_date: Day::ymd(1950, 1, 1),
            phone: PHONES[1].map(Sensitive::new),
            tags: vec![TagSpan {
                group: KeyGroup::ElderlyAlone,
                since: Day::ymd(2024, 3, 1).expect("a date"),
                until: None,
            }],
        };
        hh.members.insert(head.id, head);
        w.written.tags = 1;
        let mut base = check("create", HouseholdDoc::create(&hh, &creator, w.now_ms))?;
        let bytes = base.save();
        for i in 0..k {
            let mut doc = check("load base", HouseholdDoc::load(&bytes))?;
            let actor = ActorId::from([0xA0 + i as u8; 16]);
            doc.set_actor(actor.clone());
            let author = Author {
                user: UserId(w.uuid()),
                device: DeviceId(w.uuid()),
            };
            w.replicas.push(Replica {
                doc,
                actor,
                author,
                last_sent: Vec::new(),
            });
        }
        Ok(w)
    }

    fn uuid(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u128(0x0194_0000_0000_7000_8000_0000_0000_0000 | self.next_id)
    }

    fn tick(&mut self) -> i64 {
        self.now_ms += 1_000;
        self.now_ms
    }

    fn k(&self) -> usize {
        self.replicas.len()
    }

    /// A typed edit on replica `at` that must succeed.
    fn edit(&mut self, at: Index, f: impl FnOnce(&mut Household)) -> Result<(), TestCaseError> {
        let now = self.tick();
        let i = at.index(self.k());
        let r = &mut self.replicas[i];
        check(
            &format!("edit on replica {i}"),
            r.doc.edit(&r.author, now, |h| {
                f(h);
                Ok(())
            }),
        )?;
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::SetDoorNumber { at, value } => self.edit(at, |h| {
                h.door_number = DOOR_NUMBERS[value].into();
            }),
            Op::SetAddress { at, value } => self.edit(at, |h| {
                h.address = ADDRESSES[value].into();
            }),
            Op::SetPhone { at, member, value } => self.edit(at, |h| {
                let phone = PHONES[value].map(Sensitive::new);
                match member.and_then(|m| nth_key(&h.members, m)) {
                    Some(id) => h.members.get_mut(&id).expect("picked").phone = phone,
                    None => h.phone = phone,
                }
            }),
            Op::SetStatus { at, value } => self.edit(at, |h| h.status = STATUSES[value]),
            Op::AddMember { at, relation, name } => {
                let id = MemberId(self.uuid());
                self.written.members.push(id);
                self.edit(at, |h| {
                    h.members.insert(
                        id,
                        Member {
                            id,
                            relation: RELATIONS[relation],
                            name: NAMES[name].into(),
                            id_number: None,
                            birth_date: None,
                            phone: None,
                            tags: vec![],
                        },
                    );
                })
            }
            Op::AddTag {
                at,
                member,
                group,
                since_days,
            } => {
                self.written.tags += 1;
                let tag = TagSpan {
                    group: KeyGroup::ALL[group],
                    since: Day::ymd(2024, 1, 1)
                        .expect("a date")
                        .add_days(since_days.into()),
                    until: None,
                };
                self.edit(at, |h| match member.and_then(|m| nth_key(&h.members, m)) {
                    Some(id) => h.members.get_mut(&id).expect("picked").tags.push(tag),
                    None => h.tags.push(tag),
                })
            }
            Op::AddVisit {
                at,
                year,
                month,
                second_visit_day,
                note,
                demands,
            } => {
                let now = self.tick();
                let visit_id = VisitId(self.uuid());
                let demand_ids: Vec<DemandId> =
                    (0..demands).map(|_| DemandId(self.uuid())).collect();
                let i = at.index(self.k());
                let r = &mut self.replicas[i];
                let author = r.author;
                let people_met = check("household", r.doc.household())?
                    .members
                    .keys()
                    .copied()
                    .collect();
                let visit_day = visit_days_of_month(year, month).expect("a month")
                    [usize::from(second_visit_day)];
                let demands: Vec<Demand> = demand_ids
                    .iter()
                    .map(|&id| Demand {
                        id,
                        raised_on_visit: Some(visit_id),
                        raised_by: author.user,
                        raised_at_ms: now,
                        category: NeedCategory::Housing,
                        text: "屋顶漏雨".into(),
                        urgency: Urgency::Normal,
                        status: DemandStatus::Raised,
                        history: vec![],
                        first_responsible: None,
                        source: Some(DemandSource::Visit),
                        external_ref: None,
                    })
                    .collect();
                let visit = Visit {
                    id: visit_id,
                    visit_day,
                    worker: author.user,
                    device: author.device,
                    started_at_ms: now,
                    ended_at_ms: Some(now + 600_000),
                    gps: Some(Gps {
                        lat: 34.75,
                        lon: 113.62,
                        accuracy_m: Some(8.0),
                    }),
                    outcome: VisitOutcome::Met,
                    people_met,
                    needs: vec![Need {
                        category: NeedCategory::HealthCare,
                        detail: "血压药快吃完了".into(),
                    }],
                    disputes: vec![],
                    hazards: vec![],
                    publicity: vec![Publicity::AntiFraud],
                    note: Text::with_value(NOTES[note]),
                    demands_raised: demand_ids.clone(),
                };
                check(
                    &format!("add_visit on replica {i}"),
                    r.doc.add_visit(&author, now, &visit, &demands),
                )?;
                self.written.visits.push(visit_id);
                for id in demand_ids {
                    self.written.transitions.insert(id, 0);
                }
                Ok(())
            }
            Op::SpliceNote {
                at,
                visit,
                pos,
                delete,
                insert,
            } => {
                let now = self.tick();
                let i = at.index(self.k());
                let r = &mut self.replicas[i];
                let hh = check("household", r.doc.household())?;
                let Some(visit) = nth_key(&hh.visits, visit) else {
                    return Ok(());
                };
                let len = hh.visits[&visit].note.as_str().chars().count();
                let pos = pos.index(len + 1);
                let delete = delete.min(len - pos);
                check(
                    &format!("splice_note on replica {i} at {pos} deleting {delete}"),
                    r.doc
                        .splice_note(&r.author, now, visit, pos, delete, INSERTS[insert]),
                )?;
                Ok(())
            }
            Op::TransitionDemand { at, demand, to } => {
                let now = self.tick();
                let i = at.index(self.k());
                let r = &mut self.replicas[i];
                let hh = check("household", r.doc.household())?;
                let Some(demand) = nth_key(&hh.demands, demand) else {
                    return Ok(());
                };
                let rules = Deadlines::default();
                let from = replay(&hh.demands[&demand], &rules).status;
                let step = demand_step(to);
                let to = step.action;
                let before = r.doc.heads();
                let result = r.doc.demand_step(&r.author, now, demand, &step, &rules);
                if to.next(from).is_some() {
                    check(&format!("step {to:?} from {from:?}"), result)?;
                    *self.written.transitions.entry(demand).or_default() += 1;
                } else {
                    prop_assert!(
                        matches!(result, Err(DocError::InvalidEdit(_))),
                        "{from:?} → {to:?} should be refused, got {result:?}"
                    );
                    prop_assert_eq!(r.doc.heads(), before, "a refused step wrote something");
                }
                Ok(())
            }
            Op::Restart { at } => {
                let i = at.index(self.k());
                let r = &mut self.replicas[i];
                let heads = r.doc.heads();
                let record = check("household", r.doc.household())?;
                let mut doc = check("reload", HouseholdDoc::load(&r.doc.save()))?;
                doc.set_actor(r.actor.clone());
                prop_assert_eq!(doc.heads(), heads, "reload changed replica {}'s heads", i);
                prop_assert_eq!(check("household", doc.household())?, record);
                r.doc = doc;
                Ok(())
            }
            Op::Send { from, everything } => {
                let i = from.index(self.k());
                let r = &mut self.replicas[i];
                let changes = if everything {
                    r.doc.changes_since(&[])
                } else {
                    r.doc.changes_since(&r.last_sent)
                };
                r.last_sent = r.doc.heads();
                if !changes.is_empty() {
                    self.queue.push(Message { changes });
                }
                Ok(())
            }
            Op::Deliver {
                pick,
                reorder,
                to,
                fate,
                reversed,
                one_by_one,
            } => {
                if self.queue.is_empty() {
                    return Ok(());
                }
                let at = if reorder {
                    pick.index(self.queue.len())
                } else {
                    0
                };
                let message = self.queue.remove(at);
                let times = match fate {
                    Fate::Drop => 0,
                    Fate::Deliver | Fate::Duplicate | Fate::LoseOne(_) => 1,
                    Fate::DeliverTwice => 2,
                };
                let mut changes: Vec<&[u8]> = message.changes.iter().map(Vec::as_slice).collect();
                if let Fate::LoseOne(lost) = fate {
                    changes.remove(lost.index(changes.len()));
                }
                if reversed {
                    changes.reverse();
                }
                let i = to.index(self.k());
                let batches: Vec<&[&[u8]]> = if one_by_one {
                    changes.chunks(1).collect()
                } else {
                    vec![&changes]
                };
                for _ in 0..times {
                    for batch in &batches {
                        check(
                            &format!("apply_changes on replica {i}"),
                            self.replicas[i].doc.apply_changes(batch.iter().copied()),
                        )?;
                    }
                }
                if let Fate::Duplicate = fate {
                    self.queue.push(message);
                }
                Ok(())
            }
            Op::Merge { into, from } => {
                let (into, from) = (into.index(self.k()), from.index(self.k()));
                if into == from {
                    return Ok(());
                }
                let (a, b) = pick_two(&mut self.replicas, into, from);
                check("merge", a.doc.merge(&mut b.doc))
            }
        }
    }

    /// Every replica sends all its changes to every other, at most K rounds, until all
    /// heads agree.
    fn exchange_everything(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..self.k() {
            if self.all_heads().windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            for i in 0..self.k() {
                let changes = self.replicas[i].doc.changes_since(&[]);
                for j in (0..self.k()).filter(|&j| j != i) {
                    check(
                        &format!("final apply_changes {i} → {j}"),
                        self.replicas[j]
                            .doc
                            .apply_changes(changes.iter().map(Vec::as_slice)),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn all_heads(&mut self) -> Vec<Vec<ChangeHash>> {
        self.replicas.iter_mut().map(|r| r.doc.heads()).collect()
    }
}

fn pick_two<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

fn replicas_converge(k: usize, script: &[Op]) -> Result<(), TestCaseError> {
    let mut world = World::new(k)?;
    for (step, op) in script.iter().enumerate() {
        world
            .run(op)
            .map_err(|e| TestCaseError::fail(format!("step {step} ({op:?}): {e}")))?;
    }
    world.exchange_everything()?;

    let heads = world.all_heads();
    for (i, h) in heads.iter().enumerate() {
        prop_assert_eq!(
            h,
            &heads[0],
            "replica {}'s heads differ from replica 0's",
            i
        );
    }
    let mut records = Vec::new();
    let mut found = Vec::new();
    for (i, r) in world.replicas.iter_mut().enumerate() {
        prop_assert!(
            r.doc.missing_deps().is_empty(),
            "replica {} still waits for changes",
            i
        );
        records.push(check("household", r.doc.household())?);
        found.push(check("conflicts", conflicts::conflicts(&mut r.doc))?);
    }
    let paths = |c: &[Conflict]| c.iter().map(|c| c.path.clone()).collect::<Vec<_>>();
    for i in 1..k {
        prop_assert_eq!(&records[i], &records[0], "replica {}'s record differs", i);
        prop_assert_eq!(
            paths(&found[i]),
            paths(&found[0]),
            "replica {}'s conflicts differ",
            i
        );
        // The values, their order (values[0] is the shown winner), authors and times too.
        prop_assert_eq!(
            &found[i],
            &found[0],
            "replica {}'s conflict values differ",
            i
        );
    }

    // Nothing written anywhere was lost on the way.
    let merged = &records[0];
    let written = &world.written;
    for id in &written.members {
        prop_assert!(merged.members.contains_key(id), "member {:?} lost", id);
    }
    for id in &written.visits {
        prop_assert!(merged.visits.contains_key(id), "visit {:?} lost", id);
    }
    for (id, n) in &written.transitions {
        let demand = merged.demands.get(id);
        prop_assert!(demand.is_some(), "demand {:?} lost", id);
        prop_assert_eq!(
            demand.expect("checked").history.len(),
            *n,
            "demand {:?} lost history entries",
            id
        );
    }
    let tags = merged.tags.len() + merged.members.values().map(|m| m.tags.len()).sum::<usize>();
    prop_assert_eq!(tags, written.tags, "tags lost or duplicated");

    // Saving and loading is exact.
    let r = &mut world.replicas[0];
    let mut loaded = check("load saved", HouseholdDoc::load(&r.doc.save()))?;
    prop_assert_eq!(
        loaded.heads(),
        heads[0].clone(),
        "load(save()) changed the heads"
    );
    prop_assert_eq!(
        &check("household of loaded", loaded.household())?,
        merged,
        "load(save()) changed the record"
    );
    prop_assert_eq!(
        &check("conflicts of loaded", conflicts::conflicts(&mut loaded))?,
        &found[0],
        "load(save()) changed the conflicts"
    );
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/convergence.txt"
        )))),
        ..Config::default()
    })]

    #[test]
    fn replicas_converge_after_random_edits_and_a_lossy_reordered_exchange(
        k in 2usize..=4,
        script in proptest::collection::vec(op(), 1..40),
    ) {
        replicas_converge(k, &script)?;
    }
}
