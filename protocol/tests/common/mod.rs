//! Builders shared by the protocol's integration tests.
#![allow(dead_code)]

use autosurgeon::Text;
use qiaomen_protocol::{calendar::Day, doc::Author, ids::*, schema::*};

pub fn author() -> Author {
    Author {
        user: UserId::new(),
        device: DeviceId::new(),
    }
}

pub fn day(s: &str) -> Day {
    s.parse().unwrap()
}

pub fn household() -> Household {
    let mut hh = Household::new(
        HouseholdId::new(),
        GridId::new("dongcun-03"),
        "东村三组",
        "17",
    );
    let head = Member {
        id: MemberId::new(),
        relation: Relation::Head,
        name: "王建国".into(),
        id_number: Some(Sensitive::new("410108195001011234")),
        birth_date: Some(day("1950-01-01")),
        phone: Some(Sensitive::new("13812345678")),
        tags: vec![TagSpan {
            group: KeyGroup::ElderlyAlone,
            since: day("2024-03-01"),
            until: None,
        }],
    };
    hh.members.insert(head.id, head);
    hh
}

pub fn visit(author: &Author, visit_day: &str, note: &str) -> Visit {
    Visit {
        id: VisitId::new(),
        visit_day: day(visit_day),
        worker: author.user,
        device: author.device,
        started_at_ms: 1_763_000_000_000,
        ended_at_ms: Some(1_763_000_600_000),
        gps: Some(Gps {
            lat: 34.75,
            lon: 113.62,
            accuracy_m: Some(8.0),
        }),
        outcome: VisitOutcome::Met,
        people_met: vec![],
        needs: vec![Need {
            category: NeedCategory::HealthCare,
            detail: "血压药快吃完了".into(),
        }],
        disputes: vec![],
        hazards: vec![Hazard {
            kind: HazardKind::Electrical,
            detail: "厨房电线老化".into(),
        }],
        publicity: vec![Publicity::AntiFraud, Publicity::MedicalInsurance],
        note: Text::with_value(note),
        demands_raised: vec![],
    }
}
