//! Monthly billing periods anchored on the day a subscription started, as
//! card processors do: a subscription started on the 31st renews on the
//! last day of shorter months.

use time::{Date, Month, OffsetDateTime};

/// A half-open billing period `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

impl Period {
    /// Whole days in the period (28 to 31).
    pub fn days(&self) -> i64 {
        (self.end - self.start).whole_days()
    }
}

/// `anchor` moved by `months` calendar months, the day clamped to the
/// target month's length and the time of day kept.
fn add_months(anchor: OffsetDateTime, months: i64) -> Option<OffsetDateTime> {
    let index = i64::from(anchor.year()) * 12 + i64::from(u8::from(anchor.month())) - 1 + months;
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).ok()?).ok()?;
    let day = anchor.day().min(time::util::days_in_month(month, year));
    let date = Date::from_calendar_date(year, month, day).ok()?;
    Some(anchor.replace_date(date))
}

/// The period anchored at `anchor` that contains `now`; the first period
/// when `now` is before the anchor. `None` only for dates outside the
/// calendar `time` supports.
pub fn period_containing(anchor: OffsetDateTime, now: OffsetDateTime) -> Option<Period> {
    if now < anchor {
        return Some(Period {
            start: anchor,
            end: add_months(anchor, 1)?,
        });
    }
    // A first guess from the calendar, then step to the exact period (the
    // guess can be one off around clamped days and times of day).
    let mut months = (i64::from(now.year()) - i64::from(anchor.year())) * 12
        + i64::from(u8::from(now.month()))
        - i64::from(u8::from(anchor.month()));
    loop {
        let start = add_months(anchor, months)?;
        let end = add_months(anchor, months + 1)?;
        if now < start {
            months -= 1;
        } else if now >= end {
            months += 1;
        } else {
            return Some(Period { start, end });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_mid_month_anchor_renews_on_the_same_day() {
        let p = period_containing(
            datetime!(2026-01-15 10:00 UTC),
            datetime!(2026-03-20 08:00 UTC),
        )
        .unwrap();
        assert_eq!(p.start, datetime!(2026-03-15 10:00 UTC));
        assert_eq!(p.end, datetime!(2026-04-15 10:00 UTC));
        assert_eq!(p.days(), 31);
    }

    #[test]
    fn before_the_time_of_day_it_is_still_the_previous_period() {
        let p = period_containing(
            datetime!(2026-01-15 10:00 UTC),
            datetime!(2026-03-15 09:59 UTC),
        )
        .unwrap();
        assert_eq!(p.start, datetime!(2026-02-15 10:00 UTC));
        assert_eq!(p.days(), 28);
    }

    #[test]
    fn the_31st_renews_on_the_last_day_of_short_months() {
        let anchor = datetime!(2026-01-31 00:00 UTC);
        let feb = period_containing(anchor, datetime!(2026-03-01 00:00 UTC)).unwrap();
        assert_eq!(feb.start, datetime!(2026-02-28 00:00 UTC));
        assert_eq!(feb.end, datetime!(2026-03-31 00:00 UTC));
        let leap = period_containing(anchor, datetime!(2028-02-29 12:00 UTC)).unwrap();
        assert_eq!(leap.start, datetime!(2028-02-29 00:00 UTC));
    }

    #[test]
    fn periods_tile_time_without_gaps() {
        let anchor = datetime!(2025-10-31 23:30 UTC);
        let mut now = anchor;
        let mut previous: Option<Period> = None;
        for _ in 0..40 {
            let p = period_containing(anchor, now).unwrap();
            assert!(p.start <= now && now < p.end);
            if let Some(prev) = previous {
                assert_eq!(prev.end, p.start);
            }
            previous = Some(p);
            now = p.end;
        }
    }

    #[test]
    fn before_the_anchor_is_the_first_period() {
        let anchor = datetime!(2026-05-10 00:00 UTC);
        let p = period_containing(anchor, datetime!(2026-05-01 00:00 UTC)).unwrap();
        assert_eq!(p.start, anchor);
    }
}
