//! Wall-clock formatting: every time on the wire is an RFC 3339 string.

use std::time::SystemTime;

/// `2026-11-27T20:30:37.123Z`. Never panics: times outside what RFC 3339
/// can write (before 1970, after 9999) are clamped to its range.
pub fn rfc3339(t: SystemTime) -> String {
    // 9999-12-31T23:59:59.999Z
    const LAST: std::time::Duration = std::time::Duration::from_millis(253_402_300_799_999);
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .min(LAST);
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + since).to_string()
}

pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// Milliseconds in a duration, saturating.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn out_of_range_times_are_clamped_not_a_panic() {
        let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn formats_with_millis_and_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
