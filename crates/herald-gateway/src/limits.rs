//! Rate limits of the routes anyone can reach or a token can use to fill NATS: sign-ins, portal
//! links opened and minted, and event scans. Each is a token bucket per key (a token's hash, or
//! one key for the whole gateway), refilled continuously; a caller over its limit gets a 429
//! with `Retry-After`. Per gateway replica: N replicas allow N times as much.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// Keys kept at most; beyond, full buckets (idle keys) are forgotten first.
const MAX_KEYS: usize = 10_000;

/// A token bucket per key: `burst` at once, then `per_second`.
pub(crate) struct Limiter {
    what: &'static str,
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    pub(crate) fn new(what: &'static str, per_second: f64, burst: u32) -> Self {
        Self { what, per_second, burst: f64::from(burst), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one from `key`'s bucket, or answers 429 saying when to come back.
    pub(crate) fn take(&self, key: &str) -> Result<(), ApiError> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &str, now: Instant) -> Result<(), ApiError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (level, at)| *level + now.duration_since(*at).as_secs_f64() * per_second < burst);
            if buckets.len() >= MAX_KEYS {
                return Err(self.refusal(Duration::from_secs(1)));
            }
        }
        let (level, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(self.refusal(Duration::from_secs_f64((1.0 - *level) / self.per_second)))
        }
    }

    fn refusal(&self, wait: Duration) -> ApiError {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        ApiError::too_many_requests(format!("too many {}; retry in {secs} s", self.what), secs)
    }
}

/// Scans (event searches and listings, attempts, dead letters, replays) in progress per caller,
/// at most `per_caller` at once: each reads up to 100,000 stored messages.
pub(crate) struct Scans {
    per_caller: usize,
    running: std::sync::Arc<Mutex<HashMap<String, usize>>>,
}

/// One scan in progress; it ends when dropped.
pub(crate) struct Scanning {
    caller: String,
    running: std::sync::Arc<Mutex<HashMap<String, usize>>>,
}

impl Scans {
    pub(crate) fn new(per_caller: usize) -> Self {
        Self { per_caller, running: Default::default() }
    }

    /// Starts a scan for `caller` (a token's hash), or answers 429 while it has
    /// `per_caller` running.
    pub(crate) fn enter(&self, caller: &str) -> Result<Scanning, ApiError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let n = running.entry(caller.to_owned()).or_insert(0);
        if *n >= self.per_caller {
            return Err(ApiError::too_many_requests(
                format!("{} scans of this caller are running already; retry when one is done", self.per_caller),
                1,
            ));
        }
        *n += 1;
        Ok(Scanning { caller: caller.to_owned(), running: self.running.clone() })
    }
}

impl Drop for Scanning {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.caller);
            }
        }
    }
}

/// The gateway's limits.
pub(crate) struct Limits {
    /// `POST /console/session`, for the whole gateway.
    pub sign_ins: Limiter,
    /// `POST /portal/session`, for the whole gateway.
    pub portal_opens: Limiter,
    /// `POST /v1/portal/sessions`, per token.
    pub links: Limiter,
    /// Scans in progress, per token (a session's: the one behind it).
    pub scans: Scans,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sign_ins: Limiter::new("console sign-ins", 2.0, 20),
            portal_opens: Limiter::new("portal links opened", 20.0, 100),
            links: Limiter::new("portal links asked for by this token", 1.0, 60),
            scans: Scans::new(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_its_burst_through_then_its_rate_and_says_when() {
        let limiter = Limiter::new("things", 2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.take_at("a", t0).unwrap();
        }
        let refused = limiter.take_at("a", t0).unwrap_err();
        assert_eq!(refused.status().as_u16(), 429);
        assert!(refused.to_json()["detail"].as_str().unwrap().contains("too many things; retry in 1 s"));
        // Another key has a bucket of its own.
        limiter.take_at("b", t0).unwrap();
        // Half a second refills one.
        limiter.take_at("a", t0 + Duration::from_millis(500)).unwrap();
        assert!(limiter.take_at("a", t0 + Duration::from_millis(500)).is_err());
        // Idle long enough, it is full again, and no fuller.
        for _ in 0..3 {
            limiter.take_at("a", t0 + Duration::from_secs(60)).unwrap();
        }
        assert!(limiter.take_at("a", t0 + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn scans_per_caller_are_bounded_and_end_when_dropped() {
        let scans = Scans::new(2);
        let (a, b) = (scans.enter("x").unwrap(), scans.enter("x").unwrap());
        let refused = scans.enter("x").err().expect("a third at once");
        assert_eq!(refused.status().as_u16(), 429);
        let other = scans.enter("y").unwrap();
        drop(a);
        let c = scans.enter("x").unwrap();
        drop((b, c, other));
        assert!(scans.running.lock().unwrap().is_empty(), "nothing kept for callers with no scan");
    }

    #[test]
    fn keys_are_bounded() {
        let limiter = Limiter::new("things", 1.0, 1);
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            limiter.take_at(&i.to_string(), t0).unwrap();
        }
        // Every bucket is empty (in use): a new key is refused rather than kept.
        assert!(limiter.take_at("new", t0).is_err());
        // Once they refilled (idle), they are forgotten and the new key gets in.
        limiter.take_at("new", t0 + Duration::from_secs(5)).unwrap();
        assert!(limiter.buckets.lock().unwrap().len() < 10);
    }
}
