//! Time stamps as the records and the CRI carry them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now (0 before the epoch, `i64::MAX` after 2262).
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2020_and_moves_forward() {
        let a = now_nanos();
        assert!(a > 1_577_836_800_000_000_000, "{a}");
        let b = now_nanos();
        assert!(b >= a);
    }
}
