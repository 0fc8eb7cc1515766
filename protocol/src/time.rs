//! Unix times as people read them: RFC 3339 dates, and how far a time is from now.
//!
//! Used by error messages (ticket expiry, clock skew) and by the CLI. Like the rest of the
//! crate it reads no clock: callers pass `now`.

use std::time::{Duration, UNIX_EPOCH};

/// The first second after year 9999, which RFC 3339 cannot write.
const YEAR_10000: u64 = 253_402_300_800;

/// `2026-12-02T02:35:00Z`: Unix seconds as an RFC 3339 date (UTC, whole seconds).
pub fn rfc3339(unix_secs: u64) -> String {
    if unix_secs >= YEAR_10000 {
        return format!("after the year 9999 (Unix second {unix_secs})");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// `45 s`, `59 min`, `3 h`, `12 days`: a span in the coarsest unit that keeps two figures.
pub fn span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// `in 59 min` or `3 min ago`: how far `at` is from `now` (both Unix seconds).
pub fn relative(at: u64, now: u64) -> String {
    if at >= now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}

/// `2026-12-02T02:35:00Z (in 59 min)`: [`rfc3339`] and [`relative`].
pub fn date_and_relative(at: u64, now: u64) -> String {
    format!("{} ({})", rfc3339(at), relative(at, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_with_a_countdown_or_an_age() {
        let now = 1_796_186_761; // 2026-12-02T04:46:01Z
        assert_eq!(rfc3339(now), "2026-12-02T04:46:01Z");
        assert_eq!(
            date_and_relative(now + 3599, now),
            "2026-12-02T05:46:00Z (in 59 min)"
        );
        assert_eq!(
            date_and_relative(now - 180, now),
            "2026-12-02T04:43:01Z (3 min ago)"
        );
        assert_eq!(relative(now, now), "in 0 s");
        assert_eq!(relative(now + 3 * 86_400, now), "in 3 days");
    }

    #[test]
    fn times_past_year_9999_do_not_panic() {
        assert!(rfc3339(u64::MAX).contains("9999"));
        assert!(date_and_relative(u64::MAX, 0).contains("days"));
    }
}
