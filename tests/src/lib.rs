//! End-to-end tests of Qiaomen live in `tests/`; this library holds what they share.

use autosurgeon::Text;
use qiaomen_protocol::{calendar::Day, doc::Author, ids::*, schema::*};

/// A plausible visit by `author` for `visit_day`.
pub fn sample_visit(author: &Author, visit_day: Day, note: &str) -> Visit {
    Visit {
        id: VisitId::new(),
        visit_day,
        worker: author.user,
        device: author.device,
        started_at_ms: 1_763_000_000_000,
        ended_at_ms: Some(1_763_000_900_000),
        gps: Some(Gps {
            lat: 34.7466,
            lon: 113.6253,
            accuracy_m: Some(6.0),
        }),
        outcome: VisitOutcome::Met,
        people_met: vec![],
        needs: vec![Need {
            category: NeedCategory::ElderlyCare,
            detail: "需要助餐服务".into(),
        }],
        disputes: vec![],
        hazards: vec![],
        publicity: vec![Publicity::AntiFraud, Publicity::FireSafety],
        note: Text::with_value(note),
        demands_raised: vec![],
    }
}
