//! Error-budget arithmetic, pure: the same definitions the generated
//! Prometheus rules compute, for callers that hold the numbers themselves
//! (the gateway's `GetSloStatus`, tests).
//!
//! Definitions (Occurrences budgeting): the error ratio is bad events over
//! all events; the error budget is `1 - target`, the error ratio the SLO
//! allows; the burn rate is the error ratio over the budget (1 spends the
//! budget exactly over the SLO window); the budget remaining is
//! `1 - bad / (budget * total)`, 1 (100 %) when there were no events yet.

use crate::SloError;
use crate::duration::Duration;

/// The share of good events an SLO promises, strictly between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    target: f64,
}

impl Objective {
    pub fn new(target: f64) -> Result<Self, SloError> {
        if target.is_finite() && target > 0.0 && target < 1.0 {
            Ok(Self { target })
        } else {
            Err(SloError::InvalidTarget(target))
        }
    }

    pub fn target(self) -> f64 {
        self.target
    }

    /// The error ratio the objective allows: `1 - target`.
    pub fn error_budget(self) -> f64 {
        1.0 - self.target
    }
}

/// Bad events over all events; `None` without events, where there is no ratio.
pub fn error_ratio(good: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| total.saturating_sub(good) as f64 / total as f64)
}

/// How many times faster than sustainable the budget is being spent.
pub fn burn_rate(error_ratio: f64, objective: Objective) -> f64 {
    error_ratio / objective.error_budget()
}

/// The share of the error budget left after `good` of `total` events:
/// 1 with no events (a window starts with its whole budget), 0 when spent,
/// negative when overspent (kept, so reports show by how much).
pub fn budget_remaining(good: u64, total: u64, objective: Objective) -> f64 {
    budget_remaining_from_ratio(error_ratio(good, total), objective)
}

/// [`budget_remaining`] from an error ratio over the whole window.
pub fn budget_remaining_from_ratio(error_ratio: Option<f64>, objective: Objective) -> f64 {
    match error_ratio {
        Some(ratio) => 1.0 - burn_rate(ratio, objective),
        None => 1.0,
    }
}

/// When the budget runs out if the current burn rate holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Exhaustion {
    /// Nothing is burning: the budget lasts.
    Never,
    /// No budget is left.
    Exhausted,
    /// Seconds from now.
    InSeconds(f64),
}

/// At `burn_rate`, a whole budget lasts one `window`; what `remaining` of it
/// lasts proportionally less. (A rolling window also forgets old errors, so
/// this is the pessimistic reading, which is the one to act on.)
pub fn project_exhaustion(remaining: f64, burn_rate: f64, window: Duration) -> Exhaustion {
    if remaining <= 0.0 {
        Exhaustion::Exhausted
    } else if burn_rate <= 0.0 || !burn_rate.is_finite() {
        Exhaustion::Never
    } else {
        Exhaustion::InSeconds(remaining * window.as_secs_f64() / burn_rate)
    }
}

/// A calendar month in UTC as Unix seconds, `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalendarMonth {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    pub start: i64,
    pub end: i64,
}

impl CalendarMonth {
    /// How much of the month has passed at `now`: the span a month-to-date
    /// budget covers, so it never reaches into the month before.
    pub fn elapsed(&self, now: i64) -> i64 {
        (now - self.start).clamp(0, self.end - self.start)
    }
}

/// The UTC calendar month holding `unix_seconds`.
pub fn calendar_month(unix_seconds: i64) -> CalendarMonth {
    let (year, month, _) = civil_from_days(unix_seconds.div_euclid(86_400));
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    CalendarMonth {
        year,
        month,
        start: days_from_civil(year, month, 1) * 86_400,
        end: days_from_civil(next_year, next_month, 1) * 86_400,
    }
}

/// How much of a window of `length` that began at `start` lies before
/// `now`: `min(length, now - start)`. A budget computed over this span uses
/// no data from before the window began.
pub fn window_elapsed(start: i64, now: i64, length: Duration) -> i64 {
    (now - start).clamp(0, i64::try_from(length.seconds()).unwrap_or(i64::MAX))
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, UTC).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Who is told when a burn-rate condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Page,
    Ticket,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "page" => Some(Severity::Page),
            "ticket" => Some(Severity::Ticket),
            _ => None,
        }
    }
}

/// One multi-window burn-rate condition: fires when the burn rate over both
/// the long and the short window exceeds `burn_rate`. The short window makes
/// the alert stop soon after the burning stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurnWindow {
    pub severity: Severity,
    pub burn_rate: f64,
    pub long: Duration,
    pub short: Duration,
}

impl BurnWindow {
    /// The SRE workbook's short window: a twelfth of the long one.
    pub fn with_workbook_short_window(severity: Severity, burn_rate: f64, long: Duration) -> Self {
        Self {
            severity,
            burn_rate,
            long,
            short: Duration::from_seconds(long.seconds() / 12),
        }
    }

    /// The budget share this condition lets burn before it fires, over an
    /// SLO window of `slo_window` (14.4x over 1h of 30d: 2 %).
    pub fn budget_consumed(&self, slo_window: Duration) -> f64 {
        self.burn_rate * self.long.as_secs_f64() / slo_window.as_secs_f64()
    }
}

/// The SRE workbook's four conditions (chapter 5, "Alerting on SLOs"):
/// page at 14.4x over 1h and 5m, or 6x over 6h and 30m; ticket at 3x over
/// 1d and 2h, or 1x over 3d and 6h.
pub fn workbook_burn_windows() -> [BurnWindow; 4] {
    [
        BurnWindow::with_workbook_short_window(Severity::Page, 14.4, Duration::hours(1)),
        BurnWindow::with_workbook_short_window(Severity::Page, 6.0, Duration::hours(6)),
        BurnWindow::with_workbook_short_window(Severity::Ticket, 3.0, Duration::days(1)),
        BurnWindow::with_workbook_short_window(Severity::Ticket, 1.0, Duration::days(3)),
    ]
}

/// Which burn-rate conditions hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlertDecision {
    pub firing: Vec<BurnWindow>,
}

impl AlertDecision {
    pub fn pages(&self) -> bool {
        self.firing.iter().any(|w| w.severity == Severity::Page)
    }

    pub fn tickets(&self) -> bool {
        self.firing.iter().any(|w| w.severity == Severity::Ticket)
    }

    /// The most urgent severity firing, if any.
    pub fn severity(&self) -> Option<Severity> {
        self.firing.iter().map(|w| w.severity).min()
    }
}

/// Evaluates `windows` given the error ratio over any window
/// (`error_ratio_over`; `None` where there were no events, which burns
/// nothing), exactly as the generated alert rules do.
pub fn decide_alerts(
    windows: &[BurnWindow],
    objective: Objective,
    error_ratio_over: impl Fn(Duration) -> Option<f64>,
) -> AlertDecision {
    let burning = |window: Duration, threshold: f64| {
        error_ratio_over(window).is_some_and(|ratio| burn_rate(ratio, objective) > threshold)
    };
    AlertDecision {
        firing: windows
            .iter()
            .filter(|w| burning(w.long, w.burn_rate) && burning(w.short, w.burn_rate))
            .copied()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objective(target: f64) -> Objective {
        Objective::new(target).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn objectives_are_strictly_between_zero_and_one() {
        for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            assert!(Objective::new(bad).is_err(), "{bad} accepted");
        }
        assert!(close(objective(0.999).error_budget(), 0.001));
    }

    #[test]
    fn burn_rate_is_the_error_ratio_over_the_budget() {
        assert!(close(burn_rate(0.001, objective(0.999)), 1.0));
        assert!(close(burn_rate(0.0144, objective(0.999)), 14.4));
        assert!(close(burn_rate(0.0, objective(0.99)), 0.0));
    }

    #[test]
    fn budget_remaining_starts_full_and_goes_negative_when_overspent() {
        let slo = objective(0.99);
        assert_eq!(budget_remaining(0, 0, slo), 1.0, "no events: whole budget");
        assert!(close(budget_remaining(1000, 1000, slo), 1.0));
        // 5 bad of 1000 is half of the 1 % budget.
        assert!(close(budget_remaining(995, 1000, slo), 0.5));
        assert!(close(budget_remaining(990, 1000, slo), 0.0));
        assert!(close(budget_remaining(980, 1000, slo), -1.0));
        // More good than total (counter skew) is not a negative error.
        assert!(close(budget_remaining(1001, 1000, slo), 1.0));
    }

    #[test]
    fn exhaustion_is_projected_from_the_remaining_budget_and_burn() {
        let window = Duration::days(30);
        // Burning at 1x, a full budget lasts the window.
        assert_eq!(
            project_exhaustion(1.0, 1.0, window),
            Exhaustion::InSeconds(30.0 * 86_400.0)
        );
        // At 14.4x, half a budget lasts 30d / 14.4 / 2 = 25 hours.
        match project_exhaustion(0.5, 14.4, window) {
            Exhaustion::InSeconds(s) => assert!(close(s, 25.0 * 3_600.0), "{s}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(project_exhaustion(0.5, 0.0, window), Exhaustion::Never);
        assert_eq!(project_exhaustion(0.0, 2.0, window), Exhaustion::Exhausted);
        assert_eq!(project_exhaustion(-0.3, 0.0, window), Exhaustion::Exhausted);
    }

    #[test]
    fn calendar_months_in_utc() {
        // 1970-01-01T00:00:00Z.
        let january = calendar_month(0);
        assert_eq!((january.year, january.month), (1970, 1));
        assert_eq!((january.start, january.end), (0, 31 * 86_400));
        // The last second of January is still January.
        assert_eq!(calendar_month(31 * 86_400 - 1), january);
        // 2024 is a leap year: 29 days in February.
        let leap = calendar_month(1_709_164_800); // 2024-02-29T00:00:00Z
        assert_eq!((leap.year, leap.month), (2024, 2));
        assert_eq!(leap.start, 1_706_745_600); // 2024-02-01
        assert_eq!(leap.end - leap.start, 29 * 86_400);
        // December rolls into the next year.
        let december = calendar_month(1_735_603_200); // 2024-12-31T00:00:00Z
        assert_eq!((december.year, december.month), (2024, 12));
        assert_eq!(december.end, 1_735_689_600); // 2025-01-01
        // Before the epoch too.
        let before = calendar_month(-1);
        assert_eq!((before.year, before.month), (1969, 12));
        assert_eq!(before.end, 0);
    }

    #[test]
    fn month_to_date_never_reaches_before_the_month() {
        let march = calendar_month(1_709_294_400); // 2024-03-01T12:00:00Z
        assert_eq!(march.elapsed(march.start + 3_600), 3_600);
        assert_eq!(march.elapsed(march.start - 10), 0);
        assert_eq!(march.elapsed(march.end + 10), 31 * 86_400);
        assert_eq!(window_elapsed(100, 160, Duration::minutes(5)), 60);
        assert_eq!(window_elapsed(100, 10_000, Duration::minutes(5)), 300);
        assert_eq!(window_elapsed(100, 50, Duration::minutes(5)), 0);
    }

    #[test]
    fn workbook_windows_spend_the_documented_budget_share() {
        let windows = workbook_burn_windows();
        let month = Duration::days(30);
        let shares: Vec<f64> = windows.iter().map(|w| w.budget_consumed(month)).collect();
        for (share, expected) in shares.iter().zip([0.02, 0.05, 0.10, 0.10]) {
            assert!(close(*share, expected), "{shares:?}");
        }
        let shorts: Vec<String> = windows.iter().map(|w| w.short.to_string()).collect();
        assert_eq!(shorts, ["5m", "30m", "2h", "6h"]);
    }

    #[test]
    fn alerts_need_both_windows_over_the_threshold() {
        let slo = objective(0.999);
        let windows = workbook_burn_windows();
        // 15x over the last hour and the last 5 minutes: page (1h/5m) and
        // also 6x/6h only if the 6h window burns too, which it does not.
        let ratios = |w: Duration| match w.seconds() {
            300 | 3_600 => Some(0.015),
            _ => Some(0.0005),
        };
        let decision = decide_alerts(&windows, slo, ratios);
        assert!(decision.pages());
        assert!(!decision.tickets());
        assert_eq!(decision.firing.len(), 1);
        assert_eq!(decision.severity(), Some(Severity::Page));

        // The long window burns but the short one has recovered: silent.
        let recovered = |w: Duration| match w.seconds() {
            3_600 => Some(0.015),
            _ => Some(0.0),
        };
        assert_eq!(
            decide_alerts(&windows, slo, recovered),
            AlertDecision::default()
        );

        // Just below 1x over 3 days and 6 hours: silent; just above: ticket.
        let steady = |ratio: f64| move |_: Duration| Some(ratio);
        assert!(!decide_alerts(&windows, slo, steady(0.00099)).tickets());
        let above = decide_alerts(&windows, slo, steady(0.00101));
        assert!(above.tickets() && !above.pages());

        // No traffic burns nothing.
        assert!(decide_alerts(&windows, slo, |_| None).firing.is_empty());
    }
}
