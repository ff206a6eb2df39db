//! A period's invoice lines for per-seat pricing, prorated by the day: a
//! seat count is charged for the days it was in force, the day of a change
//! at the new count (several changes in one day: the last one counts).

use time::OffsetDateTime;

use crate::period::Period;

/// A seat count in force from `effective_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeatChange {
    pub effective_at: OffsetDateTime,
    pub seats: u32,
}

/// One line: `seats` for `[start, end)`, `days` of the period's days.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceLine {
    pub seats: u32,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub days: i64,
    pub period_days: i64,
    pub amount_minor: i64,
}

impl InvoiceLine {
    pub fn description(&self) -> String {
        let seats = if self.seats == 1 { "seat" } else { "seats" };
        format!(
            "{} {seats} × {} of {} days",
            self.seats, self.days, self.period_days
        )
    }
}

/// The day of the period `at` falls on (0-based), clamped to the period.
fn day_index(period: &Period, at: OffsetDateTime) -> i64 {
    (at - period.start).whole_days().clamp(0, period.days())
}

/// Invoice lines for `period` at `seat_price_minor` per seat per period.
/// `changes` in any order; the last change at or before the period start
/// gives the count it starts with (none: it starts at 0 seats). Amounts
/// are rounded to the nearest minor unit, half up.
pub fn invoice_lines(
    period: &Period,
    changes: &[SeatChange],
    seat_price_minor: i64,
) -> Vec<InvoiceLine> {
    let period_days = period.days();
    if period_days <= 0 {
        return Vec::new();
    }
    let mut sorted: Vec<SeatChange> = changes
        .iter()
        .copied()
        .filter(|c| c.effective_at < period.end)
        .collect();
    sorted.sort_by_key(|c| c.effective_at);

    // Seats in force on each day boundary: (first day, seats).
    let mut steps: Vec<(i64, u32)> = Vec::new();
    for change in sorted {
        let day = day_index(period, change.effective_at);
        match steps.last_mut() {
            Some(last) if last.0 == day => last.1 = change.seats,
            _ => steps.push((day, change.seats)),
        }
    }

    let mut lines = Vec::new();
    for (i, &(first_day, seats)) in steps.iter().enumerate() {
        let end_day = steps.get(i + 1).map_or(period_days, |next| next.0);
        let days = end_day - first_day;
        if days <= 0 || seats == 0 {
            continue;
        }
        let numerator = i128::from(seats) * i128::from(seat_price_minor) * i128::from(days);
        let denominator = i128::from(period_days);
        let amount = (numerator * 2 + denominator) / (denominator * 2);
        lines.push(InvoiceLine {
            seats,
            start: period.start + time::Duration::days(first_day),
            end: if end_day == period_days {
                period.end
            } else {
                period.start + time::Duration::days(end_day)
            },
            days,
            period_days,
            amount_minor: i64::try_from(amount).unwrap_or(i64::MAX),
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn april() -> Period {
        Period {
            start: datetime!(2026-04-01 00:00 UTC),
            end: datetime!(2026-05-01 00:00 UTC),
        }
    }

    fn change(at: OffsetDateTime, seats: u32) -> SeatChange {
        SeatChange {
            effective_at: at,
            seats,
        }
    }

    #[test]
    fn an_unchanged_period_is_one_full_line() {
        let lines = invoice_lines(
            &april(),
            &[change(datetime!(2026-01-01 0:00 UTC), 10)],
            1500,
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].amount_minor, 15_000);
        assert_eq!(lines[0].days, 30);
        assert_eq!(lines[0].description(), "10 seats × 30 of 30 days");
    }

    #[test]
    fn a_mid_period_increase_is_prorated_by_the_day() {
        let lines = invoice_lines(
            &april(),
            &[
                change(datetime!(2026-04-16 13:45 UTC), 12),
                change(datetime!(2026-03-01 0:00 UTC), 10),
            ],
            3000,
        );
        // 10 seats for 15 days, 12 seats for 15 days, at 100 a seat-day.
        assert_eq!(
            lines
                .iter()
                .map(|l| (l.seats, l.days, l.amount_minor))
                .collect::<Vec<_>>(),
            vec![(10, 15, 15_000), (12, 15, 18_000)]
        );
        assert_eq!(lines[1].start, datetime!(2026-04-16 00:00 UTC));
        assert_eq!(lines[1].end, april().end);
    }

    #[test]
    fn the_last_change_of_a_day_counts() {
        let lines = invoice_lines(
            &april(),
            &[
                change(datetime!(2026-03-01 0:00 UTC), 5),
                change(datetime!(2026-04-10 09:00 UTC), 50),
                change(datetime!(2026-04-10 09:05 UTC), 6),
            ],
            3000,
        );
        assert_eq!(
            lines.iter().map(|l| l.seats).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert_eq!(lines.iter().map(|l| l.days).sum::<i64>(), 30);
    }

    #[test]
    fn changes_after_the_period_are_ignored_and_rounding_is_half_up() {
        let lines = invoice_lines(
            &april(),
            &[
                change(datetime!(2026-03-01 0:00 UTC), 1),
                change(datetime!(2026-05-02 0:00 UTC), 99),
            ],
            1001,
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].amount_minor, 1001);
        // One seat for 1 of 30 days at 1001: 33.37 → 33.
        let lines = invoice_lines(
            &april(),
            &[
                change(datetime!(2026-03-01 0:00 UTC), 0),
                change(datetime!(2026-04-30 0:00 UTC), 1),
            ],
            1001,
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].amount_minor, 33);
    }

    #[test]
    fn a_tenant_created_mid_period_pays_from_its_first_day() {
        let lines = invoice_lines(&april(), &[change(datetime!(2026-04-21 8:00 UTC), 3)], 3000);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].days, lines[0].amount_minor), (10, 3000));
    }
}
