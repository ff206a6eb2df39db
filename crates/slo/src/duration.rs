//! OpenSLO's duration shorthand (`5m`, `1h`, `28d`, `4w`), which is also
//! the form Prometheus takes in range selectors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::SloError;

/// A whole number of seconds, written with the largest unit that divides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    seconds: u64,
}

/// Units from the largest down, so `Display` picks the shortest spelling.
const UNITS: [(char, u64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

impl Duration {
    pub const fn from_seconds(seconds: u64) -> Self {
        Self { seconds }
    }

    pub const fn minutes(minutes: u64) -> Self {
        Self::from_seconds(minutes * 60)
    }

    pub const fn hours(hours: u64) -> Self {
        Self::from_seconds(hours * 3_600)
    }

    pub const fn days(days: u64) -> Self {
        Self::from_seconds(days * 86_400)
    }

    pub const fn seconds(self) -> u64 {
        self.seconds
    }

    pub fn as_secs_f64(self) -> f64 {
        self.seconds as f64
    }

    /// The Prometheus spelling without weeks (`28d`, not `4w`): rule names
    /// such as `rate28d` read better in days.
    pub fn prometheus(self) -> String {
        match UNITS[1..]
            .iter()
            .find(|(_, size)| self.seconds.is_multiple_of(*size) && self.seconds > 0)
        {
            Some((unit, size)) => format!("{}{unit}", self.seconds / size),
            None => "0s".to_owned(),
        }
    }
}

impl Duration {
    /// The Prometheus range one second short of this duration, in mixed
    /// units (`28d` → `27d23h59m59s`). Prometheus 2 includes a sample at
    /// the very start of a range and Prometheus 3 does not; a range that
    /// stops one second short of the window makes both count the same
    /// hourly samples, those of the hours that ended inside the window.
    pub fn prometheus_range_excluding_start(self) -> String {
        let mut rest = self.seconds.saturating_sub(1);
        if rest == 0 {
            return "0s".to_owned();
        }
        let mut text = String::new();
        for (unit, size) in &UNITS[1..] {
            if rest >= *size {
                text.push_str(&format!("{}{unit}", rest / size));
                rest %= size;
            }
        }
        text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Weeks only when the source said weeks is not knowable here; days
        // are what SRE texts and our specs use, so keep to days and below.
        f.write_str(&self.prometheus())
    }
}

impl FromStr for Duration {
    type Err = SloError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || SloError::InvalidDuration(text.to_owned());
        let unit = text.chars().last().ok_or_else(invalid)?;
        let size = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, size)| *size)
            .ok_or_else(invalid)?;
        let digits = &text[..text.len() - unit.len_utf8()];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let count: u64 = digits.parse().map_err(|_| invalid())?;
        let seconds = count.checked_mul(size).ok_or_else(invalid)?;
        Ok(Self { seconds })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!("30s".parse::<Duration>().unwrap().seconds(), 30);
        assert_eq!("5m".parse::<Duration>().unwrap().seconds(), 300);
        assert_eq!("6h".parse::<Duration>().unwrap().seconds(), 21_600);
        assert_eq!("28d".parse::<Duration>().unwrap().seconds(), 28 * 86_400);
        assert_eq!("4w".parse::<Duration>().unwrap(), Duration::days(28));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "m", "5", "5x", "-5m", "1.5h", "5 m"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn prints_the_largest_exact_unit_in_days_at_most() {
        assert_eq!(Duration::minutes(90).to_string(), "90m");
        assert_eq!(Duration::minutes(120).to_string(), "2h");
        assert_eq!(Duration::days(28).to_string(), "28d");
        assert_eq!(Duration::from_seconds(61).to_string(), "61s");
        assert_eq!(
            Duration::days(28).prometheus_range_excluding_start(),
            "27d23h59m59s"
        );
        assert_eq!(
            Duration::hours(1).prometheus_range_excluding_start(),
            "59m59s"
        );
        // Zero is a valid `alertAfter`.
        assert_eq!("0m".parse::<Duration>().unwrap().to_string(), "0s");
    }
}
