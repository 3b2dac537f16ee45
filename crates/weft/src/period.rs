//! Periods on the command line, in one form everywhere: a whole number and
//! a unit, `500ms`, `10s`, `2m`, `1h`, `7d`, each flag with its own range
//! (longer ones are typos, not settings, and some would overflow the
//! timers they feed).

use std::time::Duration;

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `10s`-style text.
pub fn parse(text: &str) -> Result<Duration, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let Some((_, per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "{text:?} is not a period: write a whole number and a unit, e.g. 500ms, 10s, 2m, 1h, 7d"
        ));
    };
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a period: {digits:?} is not a whole number"))?;
    count
        .checked_mul(*per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is far too long a period"))
}

/// A period in the largest unit that shows it exactly.
pub fn show(period: Duration) -> String {
    let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    let (name, per_unit) = UNITS
        .iter()
        .rev()
        .find(|(_, per_unit)| ms % per_unit == 0 && ms > 0)
        .unwrap_or(&UNITS[0]);
    format!("{}{name}", ms / per_unit)
}

/// A clap value parser for periods from `min` to `max`.
pub fn between(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let period = parse(text)?;
        if period < min || period > max {
            return Err(format!("{text} is outside {}..={}", show(min), show(max)));
        }
        Ok(period)
    }
}

pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_a_number_and_a_unit() {
        assert_eq!(parse("500ms"), Ok(ms(500)));
        assert_eq!(parse("10s"), Ok(secs(10)));
        assert_eq!(parse("2m"), Ok(secs(120)));
        assert_eq!(parse("1h"), Ok(secs(3600)));
        assert_eq!(parse("7d"), Ok(secs(7 * 86400)));
        for bad in ["", "10", "s", "1.5s", "-1s", "10 s", "10sec", "1e3ms"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse("18446744073709551615d")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn periods_show_in_their_largest_exact_unit() {
        assert_eq!(show(ms(1500)), "1500ms");
        assert_eq!(show(secs(120)), "2m");
        assert_eq!(show(secs(86400)), "1d");
        assert_eq!(show(Duration::ZERO), "0ms");
    }

    #[test]
    fn ranges_are_inclusive_and_named_in_the_error() {
        let p = between(ms(100), secs(3600));
        assert_eq!(p("100ms"), Ok(ms(100)));
        assert_eq!(p("1h"), Ok(secs(3600)));
        assert_eq!(p("99ms").unwrap_err(), "99ms is outside 100ms..=1h");
        assert!(p("61m").is_err());
    }
}
