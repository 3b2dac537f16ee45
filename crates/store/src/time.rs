//! Time as the store keeps it: unix milliseconds in SQL, RFC 3339 in JSON.
//!
//! Owns the conversions and the clamping that keeps every stored instant
//! representable in both forms. It must not read the clock anywhere but
//! [`now_ms`], so tests and callers see one notion of "now" per operation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::jiff::Timestamp;

/// The latest whole second jiff can express (late in year 9999, which is
/// also as far as RFC 3339 goes); expiries are clamped to it so a huge TTL
/// still yields a valid `expiresAt`.
fn latest_ms() -> u64 {
    Timestamp::MAX
        .as_second()
        .unsigned_abs()
        .saturating_mul(1000)
}

fn whole_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The current time; a clock set before 1970 reads as 1970 rather than failing.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, whole_ms)
}

pub(crate) fn expiry_ms(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(whole_ms(ttl)).min(latest_ms())
}

pub(crate) fn system_time(ms: u64) -> SystemTime {
    // Falling back is unreachable in practice: year 9999 fits the SystemTime of
    // every platform Rust supports.
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms.min(latest_ms())))
        .unwrap_or(UNIX_EPOCH)
}

pub(crate) fn timestamp(ms: u64) -> Timestamp {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Instants before 1970 cannot be stored; they read as 1970, already expired.
pub(crate) fn unix_ms(timestamp: Timestamp) -> u64 {
    u64::try_from(timestamp.as_millisecond()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_ttl_clamps_to_the_latest_expressible_instant() {
        let expiry = expiry_ms(now_ms(), Duration::MAX);
        assert_eq!(timestamp(expiry).to_string(), "9999-12-30T22:00:00Z");
        assert!(system_time(expiry) > SystemTime::now());
    }

    #[test]
    fn milliseconds_survive_rfc3339_round_trip() {
        let ms = 1_700_000_000_123;
        let text = timestamp(ms).to_string();
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        let parsed: Timestamp = text.parse().expect("valid RFC 3339");
        assert_eq!(unix_ms(parsed), ms);
        assert_eq!(system_time(ms), UNIX_EPOCH + Duration::from_millis(ms));
    }

    #[test]
    fn instants_before_1970_read_as_1970() {
        let before: Timestamp = "1969-12-31T23:59:59Z".parse().expect("valid RFC 3339");
        assert_eq!(unix_ms(before), 0);
    }
}
