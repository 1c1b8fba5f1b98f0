//! Dates and the visit-day rule (敲门日), in one place.
//!
//! Grid workers knock on every door on the **15th and the 30th** of each month. A month with
//! fewer than 30 days (February) has its second visit day on its last day. A *cycle* runs from
//! one visit day up to, not including, the next; a visit belongs to the cycle of the visit day it
//! was recorded for (a catch-up visit on the 17th is recorded for the 15th).

use std::{fmt, str::FromStr};

use autosurgeon::{Hydrate, HydrateError, Reconcile};
use serde::{Deserialize, Serialize};
use time::{Month, format_description::BorrowedFormatItem, macros::format_description};

const FORMAT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// A calendar date (no time zone: the date on the worker's wall calendar).
/// Stored in documents as `"YYYY-MM-DD"`, which sorts as text and reads well in exports.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub time::Date);

/// The error for a malformed date string or an impossible date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a date in YYYY-MM-DD form")]
pub struct DayParseError;

impl Day {
    /// `Day::ymd(2026, 11, 15)`; `None` for an impossible date.
    pub fn ymd(year: i32, month: u8, day: u8) -> Option<Day> {
        let month = Month::try_from(month).ok()?;
        time::Date::from_calendar_date(year, month, day)
            .ok()
            .map(Day)
    }

    pub fn year(self) -> i32 {
        self.0.year()
    }
    pub fn month(self) -> u8 {
        self.0.month() as u8
    }
    pub fn day(self) -> u8 {
        self.0.day()
    }

    /// The day `n` days later (earlier for negative `n`).
    pub fn add_days(self, n: i64) -> Day {
        Day(self.0 + time::Duration::days(n))
    }

    /// The date of a Unix timestamp in milliseconds, at a UTC offset in seconds
    /// (China Standard Time is +8 h = 28 800 s).
    pub fn from_unix_ms(ms: i64, utc_offset_secs: i32) -> Option<Day> {
        let odt = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok()?;
        let offset = time::UtcOffset::from_whole_seconds(utc_offset_secs).ok()?;
        Some(Day(odt.to_offset(offset).date()))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.format(FORMAT).map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

impl fmt::Debug for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Day({self})")
    }
}

impl FromStr for Day {
    type Err = DayParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        time::Date::parse(s, FORMAT)
            .map(Day)
            .map_err(|_| DayParseError)
    }
}

impl Serialize for Day {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Reconcile for Day {
    type Key<'a> = autosurgeon::reconcile::NoKey;
    fn reconcile<R: autosurgeon::Reconciler>(&self, reconciler: R) -> Result<(), R::Error> {
        self.to_string().reconcile(reconciler)
    }
}

impl Hydrate for Day {
    fn hydrate_string(s: &'_ str) -> Result<Self, HydrateError> {
        s.parse()
            .map_err(|_| HydrateError::unexpected("a date in YYYY-MM-DD form", s.to_string()))
    }
}

/// The last day of a month.
fn last_day_of_month(year: i32, month: Month) -> u8 {
    month.length(year)
}

/// The two visit days of a month, in order: the 15th and the 30th, or the month's last day
/// when it has fewer than 30 days.
pub fn visit_days_of_month(year: i32, month: u8) -> Option<[Day; 2]> {
    let m = Month::try_from(month).ok()?;
    let second = last_day_of_month(year, m).min(30);
    Some([Day::ymd(year, month, 15)?, Day::ymd(year, month, second)?])
}

/// Whether `day` is a visit day.
pub fn is_visit_day(day: Day) -> bool {
    visit_days_of_month(day.year(), day.month()).is_some_and(|d| d.contains(&day))
}

/// The visit day whose cycle contains `day`: the latest visit day on or before it.
pub fn cycle_of(day: Day) -> Day {
    let [fifteenth, second] =
        visit_days_of_month(day.year(), day.month()).expect("a valid Day has a valid month");
    if day >= second {
        second
    } else if day >= fifteenth {
        fifteenth
    } else {
        // Before the 15th: the previous month's second visit day.
        let prev = Day(day.0.replace_day(1).expect("day 1 exists") - time::Duration::days(1));
        visit_days_of_month(prev.year(), prev.month()).expect("valid month")[1]
    }
}

/// The first visit day strictly after `day`.
pub fn next_visit_day(day: Day) -> Day {
    let [fifteenth, second] =
        visit_days_of_month(day.year(), day.month()).expect("a valid Day has a valid month");
    if day < fifteenth {
        fifteenth
    } else if day < second {
        second
    } else {
        let last = last_day_of_month(day.year(), day.0.month());
        let next_month =
            Day(day.0.replace_day(last).expect("last day exists") + time::Duration::days(1));
        visit_days_of_month(next_month.year(), next_month.month()).expect("valid month")[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Day {
        s.parse().unwrap()
    }

    #[test]
    fn february_second_visit_day_is_its_last_day() {
        assert_eq!(
            visit_days_of_month(2026, 2).unwrap(),
            [d("2026-02-15"), d("2026-02-28")]
        );
        assert_eq!(
            visit_days_of_month(2028, 2).unwrap(),
            [d("2028-02-15"), d("2028-02-29")]
        );
        assert_eq!(
            visit_days_of_month(2026, 1).unwrap(),
            [d("2026-01-15"), d("2026-01-30")]
        );
        assert_eq!(
            visit_days_of_month(2026, 4).unwrap(),
            [d("2026-04-15"), d("2026-04-30")]
        );
    }

    #[test]
    fn visit_day_rule() {
        assert!(is_visit_day(d("2026-11-15")));
        assert!(is_visit_day(d("2026-11-30")));
        assert!(!is_visit_day(d("2026-12-31")));
        assert!(!is_visit_day(d("2026-11-16")));
        assert!(is_visit_day(d("2026-02-28")));
        assert!(!is_visit_day(d("2028-02-28")));
    }

    #[test]
    fn cycles_span_from_one_visit_day_to_the_next() {
        assert_eq!(cycle_of(d("2026-11-22")), d("2026-11-15"));
        assert_eq!(cycle_of(d("2026-11-15")), d("2026-11-15"));
        assert_eq!(cycle_of(d("2026-11-14")), d("2026-10-30"));
        assert_eq!(cycle_of(d("2026-12-31")), d("2026-12-30"));
        assert_eq!(cycle_of(d("2026-03-01")), d("2026-02-28"));
        assert_eq!(cycle_of(d("2026-01-01")), d("2025-12-30"));
        assert_eq!(next_visit_day(d("2026-12-30")), d("2027-01-15"));
        assert_eq!(next_visit_day(d("2026-02-15")), d("2026-02-28"));
        assert_eq!(next_visit_day(d("2026-02-28")), d("2026-03-15"));
        assert_eq!(next_visit_day(d("2026-11-01")), d("2026-11-15"));
    }

    #[test]
    fn every_day_of_a_leap_year_lies_in_exactly_the_cycle_before_the_next_visit_day() {
        let mut day = d("2028-01-01");
        while day.year() == 2028 {
            let c = cycle_of(day);
            assert!(is_visit_day(c));
            assert!(c <= day);
            assert!(next_visit_day(c) > day, "{day}");
            day = day.add_days(1);
        }
    }

    #[test]
    fn malformed_dates_are_refused() {
        assert!("2026-02-30".parse::<Day>().is_err());
        assert!("2026/02/01".parse::<Day>().is_err());
        assert!("".parse::<Day>().is_err());
    }

    #[test]
    fn dates_follow_the_workers_time_zone() {
        // 2026-11-14 20:00 UTC is already the 15th in China.
        let ms = time::macros::datetime!(2026-11-14 20:00 UTC).unix_timestamp() * 1000;
        assert_eq!(Day::from_unix_ms(ms, 8 * 3600), Some(d("2026-11-15")));
        assert_eq!(Day::from_unix_ms(ms, 0), Some(d("2026-11-14")));
    }
}
