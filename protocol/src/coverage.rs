//! Visit-day coverage (走村不漏户): which households are due on a visit day, and what became of
//! each — the phone's roster and the server's "no household missed" report use this one rule.
//!
//! **Who is due.** On each visit day (a *cycle*, see [`crate::calendar`]) every active
//! household registered by that day ([`CoverageInput::registered`]) whose key-group tags hold
//! that day is due. Other households are due when they
//! were not met in the last `rotation - 1` cycles ([`CoveragePolicy::rotation`]; 1 = every
//! household every cycle, "户户见干部").
//!
//! **What became of it.** A household due in a cycle is *visited* when a visit recorded for
//! that cycle met someone; *not met* with the reason of the latest attempt (nobody home,
//! refused, moved) when only failed attempts are recorded; *pending* while neither and the
//! catch-up deadline ([`CoveragePolicy::catch_up_days`] after the visit day, at most the day
//! before the next visit day) has not passed; *missed* after it. Nobody-home households still
//! owe a catch-up visit until the deadline.

use serde::{Deserialize, Serialize};

use crate::{
    calendar::{self, Day},
    schema::{Household, HouseholdStatus, KeyGroup, TagSpan, VisitOutcome},
};

/// How often ordinary households are due, and how long a catch-up may take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoveragePolicy {
    /// Ordinary (non-key-group) households are due once every this many cycles. Key-group
    /// households are due every cycle.
    pub rotation: u32,
    /// Days after the visit day by which a household not met must have a catch-up visit.
    pub catch_up_days: u32,
}

impl Default for CoveragePolicy {
    fn default() -> Self {
        Self {
            rotation: 1,
            catch_up_days: 5,
        }
    }
}

impl CoveragePolicy {
    /// The last day a catch-up visit for the cycle of `visit_day` counts.
    pub fn catch_up_by(&self, visit_day: Day) -> Day {
        let limit = calendar::next_visit_day(visit_day).add_days(-1);
        visit_day.add_days(i64::from(self.catch_up_days)).min(limit)
    }
}

/// What coverage needs to know of a household: its status, tags and visits.
#[derive(Clone, Debug, PartialEq)]
pub struct CoverageInput {
    pub status: HouseholdStatus,
    /// The household's and its members' key-group tags.
    pub tags: Vec<TagSpan>,
    /// Every visit: the visit day it counts for and its outcome.
    pub visits: Vec<(Day, VisitOutcome)>,
    /// The day the household was registered, when known: it is not due on visit days before
    /// it (a household registered in January never counts as missed in December).
    pub registered: Option<Day>,
}

impl CoverageInput {
    pub fn of(h: &Household) -> Self {
        Self {
            status: h.status,
            tags: h
                .tags
                .iter()
                .chain(h.members.values().flat_map(|m| m.tags.iter()))
                .cloned()
                .collect(),
            visits: h
                .visits
                .values()
                .map(|v| (v.visit_day, v.outcome))
                .collect(),
            registered: None,
        }
    }

    pub fn key_groups_on(&self, day: Day) -> Vec<KeyGroup> {
        let mut g: Vec<KeyGroup> = self
            .tags
            .iter()
            .filter(|t| t.holds_on(day))
            .map(|t| t.group)
            .collect();
        g.sort();
        g.dedup();
        g
    }
}

/// What became of a due household in a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoverageState {
    /// A visit for the cycle met someone.
    Visited,
    /// Only failed attempts; the reason is the latest attempt's outcome.
    NotMet(VisitOutcome),
    /// No visit yet; the catch-up deadline has not passed.
    Pending,
    /// No visit, and the catch-up deadline has passed: a missed household (漏户).
    Missed,
}

/// A due household's coverage in one cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Due {
    pub key_groups: Vec<KeyGroup>,
    pub state: CoverageState,
    pub attempts: u32,
    /// The last day a catch-up visit counts.
    pub catch_up_by: Day,
}

/// Whether a household is due in the cycle of `visit_day`, and if so what became of it as
/// of `today`. `None`: not due (inactive, or an ordinary household met recently enough).
pub fn coverage(
    h: &CoverageInput,
    visit_day: Day,
    today: Day,
    policy: &CoveragePolicy,
) -> Option<Due> {
    if h.status != HouseholdStatus::Active || h.registered.is_some_and(|r| visit_day < r) {
        return None;
    }
    let key_groups = h.key_groups_on(visit_day);
    if key_groups.is_empty() && policy.rotation > 1 {
        // Met in one of the previous rotation - 1 cycles: not due this time.
        let mut earlier = visit_day;
        for _ in 1..policy.rotation {
            earlier = calendar::cycle_of(earlier.add_days(-1));
            if h.visits
                .iter()
                .any(|(d, o)| *d == earlier && *o == VisitOutcome::Met)
            {
                return None;
            }
        }
    }
    let mut attempts = 0;
    let mut met = false;
    let mut latest: Option<VisitOutcome> = None;
    for (d, o) in &h.visits {
        if *d == visit_day {
            attempts += 1;
            met |= *o == VisitOutcome::Met;
            // Failed attempts: the strongest reason wins (moved > refused > nobody home), so
            // the result does not depend on the order visits are listed in.
            latest = latest.max(Some(*o));
        }
    }
    let catch_up_by = policy.catch_up_by(visit_day);
    let state = if met {
        CoverageState::Visited
    } else if let Some(reason) = latest {
        CoverageState::NotMet(reason)
    } else if today > catch_up_by {
        CoverageState::Missed
    } else {
        CoverageState::Pending
    };
    Some(Due {
        key_groups,
        state,
        attempts,
        catch_up_by,
    })
}

/// Counts of a set of due households.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub due: u64,
    pub visited: u64,
    pub nobody_home: u64,
    pub refused: u64,
    pub moved: u64,
    pub pending: u64,
    pub missed: u64,
    /// Due key-group households, and how many of them were visited.
    pub key_due: u64,
    pub key_visited: u64,
}

impl Tally {
    pub fn add(&mut self, due: &Due) {
        self.due += 1;
        let visited = due.state == CoverageState::Visited;
        match due.state {
            CoverageState::Visited => self.visited += 1,
            CoverageState::NotMet(VisitOutcome::NobodyHome | VisitOutcome::Met) => {
                self.nobody_home += 1
            }
            CoverageState::NotMet(VisitOutcome::Refused) => self.refused += 1,
            CoverageState::NotMet(VisitOutcome::Moved) => self.moved += 1,
            CoverageState::Pending => self.pending += 1,
            CoverageState::Missed => self.missed += 1,
        }
        if !due.key_groups.is_empty() {
            self.key_due += 1;
            self.key_visited += u64::from(visited);
        }
    }

    pub fn merge(&mut self, o: &Tally) {
        self.due += o.due;
        self.visited += o.visited;
        self.nobody_home += o.nobody_home;
        self.refused += o.refused;
        self.moved += o.moved;
        self.pending += o.pending;
        self.missed += o.missed;
        self.key_due += o.key_due;
        self.key_visited += o.key_visited;
    }

    /// Visited ÷ due (1 when nothing was due).
    pub fn rate(&self) -> f64 {
        if self.due == 0 {
            1.0
        } else {
            self.visited as f64 / self.due as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Day {
        s.parse().unwrap()
    }

    fn plain(visits: &[(&str, VisitOutcome)]) -> CoverageInput {
        CoverageInput {
            status: HouseholdStatus::Active,
            tags: vec![],
            visits: visits.iter().map(|(s, o)| (d(s), *o)).collect(),
            registered: None,
        }
    }

    #[test]
    fn catch_up_deadlines_stop_before_the_next_visit_day() {
        let p = CoveragePolicy::default();
        assert_eq!(p.catch_up_by(d("2026-11-15")), d("2026-11-20"));
        // February's second visit day is its last; the catch-up runs into March.
        assert_eq!(p.catch_up_by(d("2026-02-28")), d("2026-03-05"));
        // A long catch-up window is cut at the day before the next visit day.
        let long = CoveragePolicy {
            catch_up_days: 30,
            ..p
        };
        assert_eq!(long.catch_up_by(d("2026-02-15")), d("2026-02-27"));
        assert_eq!(long.catch_up_by(d("2026-12-30")), d("2027-01-14"));
    }

    #[test]
    fn states_of_a_due_household() {
        use VisitOutcome::*;
        let p = CoveragePolicy::default();
        let day = d("2026-11-15");
        let state = |h: &CoverageInput, today| coverage(h, day, d(today), &p).unwrap().state;
        assert_eq!(state(&plain(&[]), "2026-11-20"), CoverageState::Pending);
        assert_eq!(state(&plain(&[]), "2026-11-21"), CoverageState::Missed);
        let tried = plain(&[("2026-11-15", NobodyHome)]);
        assert_eq!(
            state(&tried, "2026-11-29"),
            CoverageState::NotMet(NobodyHome)
        );
        let caught_up = plain(&[("2026-11-15", NobodyHome), ("2026-11-15", Met)]);
        assert_eq!(state(&caught_up, "2026-11-16"), CoverageState::Visited);
        assert_eq!(coverage(&caught_up, day, day, &p).unwrap().attempts, 2);
        // A visit for another cycle does not count.
        let other = plain(&[("2026-10-30", Met)]);
        assert_eq!(state(&other, "2026-11-16"), CoverageState::Pending);
        let refused = plain(&[("2026-11-15", NobodyHome), ("2026-11-15", Refused)]);
        assert_eq!(
            state(&refused, "2026-11-16"),
            CoverageState::NotMet(Refused)
        );
        let gone = CoverageInput {
            status: HouseholdStatus::Moved,
            ..plain(&[])
        };
        assert_eq!(coverage(&gone, day, day, &p), None);
        // Registered after the visit day: not due that day, due from the next.
        let late = CoverageInput {
            registered: Some(d("2026-11-16")),
            ..plain(&[])
        };
        assert_eq!(coverage(&late, day, d("2026-12-01"), &p), None);
        assert!(coverage(&late, d("2026-11-30"), d("2026-12-01"), &p).is_some());
        let on_the_day = CoverageInput {
            registered: Some(day),
            ..plain(&[])
        };
        assert!(coverage(&on_the_day, day, day, &p).is_some());
    }

    #[test]
    fn rotation_spares_recently_met_ordinary_households_but_not_key_groups() {
        use VisitOutcome::*;
        let p = CoveragePolicy {
            rotation: 2,
            ..CoveragePolicy::default()
        };
        let met_last_cycle = plain(&[("2026-10-30", Met)]);
        assert_eq!(
            coverage(&met_last_cycle, d("2026-11-15"), d("2026-11-15"), &p),
            None
        );
        // Two cycles later it is due again; so is one whose last attempt failed.
        assert!(coverage(&met_last_cycle, d("2026-11-30"), d("2026-11-30"), &p).is_some());
        let failed = plain(&[("2026-10-30", NobodyHome)]);
        assert!(coverage(&failed, d("2026-11-15"), d("2026-11-15"), &p).is_some());
        // Across February's short month: the cycle before 2026-03-15 is 2026-02-28.
        let feb = plain(&[("2026-02-28", Met)]);
        assert_eq!(coverage(&feb, d("2026-03-15"), d("2026-03-15"), &p), None);
        // Key groups are due every cycle.
        let elderly = CoverageInput {
            tags: vec![TagSpan {
                group: KeyGroup::ElderlyAlone,
                since: d("2026-01-01"),
                until: None,
            }],
            ..met_last_cycle.clone()
        };
        let due = coverage(&elderly, d("2026-11-15"), d("2026-11-15"), &p).unwrap();
        assert_eq!(due.key_groups, vec![KeyGroup::ElderlyAlone]);
        let mut t = Tally::default();
        t.add(&due);
        assert_eq!((t.due, t.key_due, t.pending, t.key_visited), (1, 1, 1, 0));
    }
}
