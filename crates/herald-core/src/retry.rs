//! The retry schedule: how long a failed delivery waits before its next attempt, and when to give
//! up and dead-letter it.

use std::time::Duration;

use crate::runtime::{format_duration, parse_duration_list};

/// The default delays before each retry: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";

/// Delays before each retry, with proportional jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    delays: Vec<Duration>,
    /// Fraction of each delay by which it may be moved either way (0.2 = ±20 %), so that a burst
    /// of failures does not come back as a burst.
    jitter: f64,
}

impl RetryPolicy {
    /// A policy with the given delays and jitter fraction (clamped to 0..=1).
    pub fn new(delays: Vec<Duration>, jitter: f64) -> Self {
        Self { delays, jitter: jitter.clamp(0.0, 1.0) }
    }

    /// Parses a comma-separated schedule such as `5s,5m,30m` with ±20 % jitter.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(Self::new(parse_duration_list(text)?, 0.2))
    }

    /// How many attempts are made in all: the first one plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    /// The delay before the attempt after `attempt` (1-based) failed, or `None` when the
    /// schedule is exhausted and the delivery should be dead-lettered.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        let base = *self.delays.get(attempt.checked_sub(1)? as usize)?;
        if self.jitter == 0.0 || base.is_zero() {
            return Some(base);
        }
        let unit = uniform() * 2.0 - 1.0;
        Some(base.mul_f64((1.0 + unit * self.jitter).max(0.0)))
    }

    /// The schedule in the same comma-separated form it is configured with.
    pub fn describe(&self) -> String {
        self.delays.iter().map(|d| format_duration(*d)).collect::<Vec<_>>().join(",")
    }
}

/// A random number, uniform in `[0, 1)`.
pub fn uniform() -> f64 {
    (getrandom::u64().unwrap_or(0) >> 11) as f64 / (1u64 << 53) as f64
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::parse(DEFAULT_SCHEDULE).expect("the default schedule parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 8);
        assert_eq!(p.describe(), "5s,5m,30m,2h,5h,10h,10h");
        assert!(p.delay_after(0).is_none());
        assert!(p.delay_after(8).is_none());
        for (attempt, base) in [(1, 5.0), (2, 300.0), (7, 36_000.0)] {
            let d = p.delay_after(attempt).unwrap().as_secs_f64();
            assert!(d >= base * 0.8 && d <= base * 1.2, "attempt {attempt}: {d}");
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let p = RetryPolicy::parse("100s").unwrap();
        let samples: Vec<f64> = (0..200).map(|_| p.delay_after(1).unwrap().as_secs_f64()).collect();
        assert!(samples.iter().all(|d| (80.0..=120.0).contains(d)));
        let distinct = samples.iter().map(|d| (d * 1000.0) as u64).collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() > 100, "jitter produced only {} distinct values", distinct.len());
    }

    #[test]
    fn no_jitter_is_exact() {
        let p = RetryPolicy::new(vec![Duration::from_secs(3)], 0.0);
        assert_eq!(p.delay_after(1), Some(Duration::from_secs(3)));
        assert_eq!(p.delay_after(2), None);
    }
}
