//! Endpoint health, per subscription and per replica: a circuit breaker that stops sending to an
//! endpoint after consecutive failures, lets one probe through after a cool-down and closes on
//! success, plus a cap on concurrent requests to one endpoint. Deliveries that may not go now
//! are deferred (rescheduled in JetStream), so they hold nothing while they wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Tuning of the breaker.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub threshold: u32,
    /// How long an open circuit stays open before one probe is let through.
    pub cooldown: Duration,
    /// Requests in flight to one subscription from this replica, at most.
    pub max_in_flight: u32,
}

#[derive(Debug)]
struct State {
    consecutive_failures: u32,
    /// Set while open; when passed, the circuit is half-open.
    open_until: Option<Instant>,
    /// A half-open probe is out: everyone else waits for its verdict.
    probing: bool,
    /// In-flight slots of this subscription in this replica.
    slots: Arc<Semaphore>,
    cap: u32,
    /// Deliveries waiting for a slot (each holds an unacked message in hand).
    waiting: u32,
    /// Smoothed duration of recent attempts: a fast endpoint's queue drains in moments, a slow
    /// one's does not, so only the slow one's surplus is deferred.
    latency: Duration,
    /// When an attempt last finished (or the state was created): requests in flight with no
    /// progress for long mean the endpoint is hanging, before any timeout says so.
    last_progress: Instant,
}

impl State {
    fn new(cap: u32) -> Self {
        Self {
            consecutive_failures: 0,
            open_until: None,
            probing: false,
            slots: Arc::new(Semaphore::new(cap as usize)),
            cap,
            waiting: 0,
            latency: Duration::ZERO,
            last_progress: Instant::now(),
        }
    }

    fn in_flight(&self) -> u32 {
        self.cap.saturating_sub(self.slots.available_permits() as u32)
    }

    /// Failing, slow, or hanging: its surplus deliveries are deferred, not queued.
    fn struggling(&self) -> bool {
        let stalled = self.in_flight() > 0 && self.last_progress.elapsed() > SLOW;
        self.consecutive_failures > 0 || self.open_until.is_some() || stalled || self.latency >= SLOW
    }

    /// How many deliveries may queue for a slot rather than be deferred: as many as a healthy
    /// endpoint works off within about half the queue wait.
    fn queue_limit(&self) -> u32 {
        if self.struggling() {
            return self.cap / 2;
        }
        let per_request = self.latency.max(Duration::from_millis(1));
        let rounds = ((QUEUE_WAIT / 2).as_secs_f64() / per_request.as_secs_f64()) as u32;
        self.cap.saturating_mul(rounds.clamp(1, 64))
    }

    fn idle(&self) -> bool {
        self.consecutive_failures == 0
            && self.open_until.is_none()
            && self.waiting == 0
            && self.slots.available_permits() == self.cap as usize
    }
}

/// All subscriptions' breakers in this replica.
#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    states: Mutex<HashMap<String, State>>,
    /// Told when a circuit opens or closes.
    observer: std::sync::OnceLock<crate::operational::Operational>,
}

/// Whether a delivery may be attempted now.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; report the result through the permit.
    Go(Permit),
    /// Not now: try again after this long.
    Defer {
        /// How long to wait.
        after: Duration,
        /// Why, for the logs.
        why: &'static str,
    },
}

/// The right to make one attempt; report how it went with [`Permit::finish`]. Dropped
/// unfinished (the attempt was abandoned), it frees its slot without a verdict.
#[derive(Debug)]
pub struct Permit {
    breakers: Arc<Breakers>,
    subscription: String,
    probe: bool,
    finished: bool,
    started: Instant,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Breakers {
    /// Empty.
    pub fn new(config: BreakerConfig) -> Arc<Self> {
        Arc::new(Self { config, states: Mutex::default(), observer: std::sync::OnceLock::new() })
    }

    /// Reports circuits opening and closing to `observer` from now on.
    pub(crate) fn observe(&self, observer: crate::operational::Operational) {
        let _ = self.observer.set(observer);
    }

    fn tell(&self, subscription: &str, opened: bool, consecutive_failures: u32) {
        if let Some(observer) = self.observer.get() {
            observer.notify(crate::operational::Notice::Circuit {
                subscription_id: subscription.to_owned(),
                opened,
                consecutive_failures,
            });
        }
    }

    /// Decides whether one attempt to `subscription` may go now. `cap` overrides the
    /// per-subscription in-flight limit when non-zero. A delivery finding the subscription at
    /// its limit waits briefly for a slot (a busy but healthy endpoint frees them fast); if
    /// none frees up, or too many already wait, it is deferred.
    pub async fn admit(self: &Arc<Self>, subscription: &str, cap: u32) -> Admission {
        let slots = {
            let now = Instant::now();
            let mut states = self.states.lock().expect("breaker lock");
            let state = self.state(&mut states, subscription, cap);
            if let Some(until) = state.open_until {
                // Spread the returns over a cool-down, so they do not all come back at once.
                if now < until {
                    return Admission::Defer { after: until - now + spread(self.config.cooldown), why: "circuit open" };
                }
                if state.probing {
                    let after = self.config.cooldown + spread(self.config.cooldown);
                    return Admission::Defer { after, why: "circuit half-open, probe in flight" };
                }
                // Half-open: this one probes, slot or not.
                state.probing = true;
                let slot = state.slots.clone().try_acquire_owned().ok();
                return Admission::Go(self.permit(subscription, true, slot));
            }
            if let Ok(slot) = state.slots.clone().try_acquire_owned() {
                return Admission::Go(self.permit(subscription, false, Some(slot)));
            }
            if state.waiting >= state.queue_limit() {
                return Admission::Defer { after: Duration::ZERO, why: "subscription at its in-flight limit" };
            }
            state.waiting += 1;
            state.slots.clone()
        };
        // Wait for a slot, giving up early if the endpoint turns out to be struggling.
        let deadline = Instant::now() + QUEUE_WAIT;
        let slot = loop {
            match tokio::time::timeout(RECHECK, slots.clone().acquire_owned()).await {
                Ok(Ok(slot)) => break Some(slot),
                Ok(Err(_)) => break None,
                Err(_) => {
                    let states = self.states.lock().expect("breaker lock");
                    let struggling = states.get(subscription).is_none_or(State::struggling);
                    if struggling || Instant::now() >= deadline {
                        break None;
                    }
                }
            }
        };
        let mut states = self.states.lock().expect("breaker lock");
        if let Some(state) = states.get_mut(subscription) {
            state.waiting = state.waiting.saturating_sub(1);
        }
        drop(states);
        match slot {
            Some(slot) => Admission::Go(self.permit(subscription, false, Some(slot))),
            None => Admission::Defer { after: Duration::ZERO, why: "subscription at its in-flight limit" },
        }
    }

    /// Whether fan-out may make the first attempt to `subscription` itself: the endpoint is
    /// healthy and fast (or not yet known), so holding the event for the attempt is cheaper than
    /// storing a delivery first. The attempt is still admitted by [`Breakers::admit`].
    pub fn fit_for_inline(&self, subscription: &str) -> bool {
        let states = self.states.lock().expect("breaker lock");
        states.get(subscription).is_none_or(|s| !s.struggling() && s.latency < SLOW / 2)
    }

    /// The state of `subscription`, created if new; `cap` (0: the default) is its in-flight limit.
    fn state<'a>(&self, states: &'a mut HashMap<String, State>, subscription: &str, cap: u32) -> &'a mut State {
        let cap = if cap > 0 { cap } else { self.config.max_in_flight };
        let state = states.entry(subscription.to_owned()).or_insert_with(|| State::new(cap));
        if state.cap != cap {
            // The limit changed: slots taken from the old semaphore simply lapse.
            state.slots = Arc::new(Semaphore::new(cap as usize));
            state.cap = cap;
        }
        state
    }

    fn permit(self: &Arc<Self>, subscription: &str, probe: bool, slot: Option<OwnedSemaphorePermit>) -> Permit {
        Permit {
            breakers: self.clone(),
            subscription: subscription.to_owned(),
            probe,
            finished: false,
            started: Instant::now(),
            _slot: slot,
        }
    }

    fn release(&self, permit: &Permit, verdict: Option<bool>) {
        let mut states = self.states.lock().expect("breaker lock");
        let Some(state) = states.get_mut(&permit.subscription) else { return };
        if permit.probe {
            state.probing = false;
        }
        if verdict.is_some() {
            let took = permit.started.elapsed();
            state.latency = (state.latency * 3 + took) / 4;
            state.last_progress = Instant::now();
        }
        match verdict {
            Some(true) => {
                let failures = state.consecutive_failures;
                state.consecutive_failures = 0;
                if state.open_until.take().is_some() {
                    tracing::info!(subscription = %permit.subscription, "circuit closed");
                    self.tell(&permit.subscription, false, failures);
                }
            }
            Some(false) => {
                state.consecutive_failures += 1;
                if permit.probe || state.consecutive_failures >= self.config.threshold {
                    if state.open_until.is_none() {
                        tracing::warn!(subscription = %permit.subscription, failures = state.consecutive_failures, cooldown = ?self.config.cooldown, "circuit opened");
                        self.tell(&permit.subscription, true, state.consecutive_failures);
                    }
                    state.open_until = Some(Instant::now() + self.config.cooldown);
                }
            }
            None => {}
        }
    }

    /// True if the subscription's circuit is open (or half-open) in this replica.
    pub fn is_open(&self, subscription: &str) -> bool {
        self.states.lock().expect("breaker lock").get(subscription).is_some_and(|s| s.open_until.is_some())
    }

    /// How many subscriptions have an open (or half-open) circuit in this replica.
    pub fn open_count(&self) -> usize {
        self.states.lock().expect("breaker lock").values().filter(|s| s.open_until.is_some()).count()
    }

    /// Forgets healthy, idle subscriptions (deleted ones included).
    pub fn sweep(&self) {
        self.states.lock().expect("breaker lock").retain(|_, s| !s.idle());
    }
}

/// How long a delivery waits for a slot of a busy subscription before it is deferred.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How often a queued delivery checks whether its endpoint started struggling.
const RECHECK: Duration = Duration::from_millis(200);
/// Attempts slower than this on average mark an endpoint as slow.
const SLOW: Duration = Duration::from_millis(500);

/// A random duration in `[0, max)`.
fn spread(max: Duration) -> Duration {
    max.mul_f64(herald_core::retry::uniform())
}

/// How long a delivery deferred `deferrals` times before waits now: about 1 s, 2 s, 4 s … up
/// to a minute while its endpoint stays saturated, each spread over `[½, 1½)` of itself.
/// Deferrals come in bursts (an endpoint stalls, every delivery queued for it is deferred), and
/// a burst that came back as one would find the endpoint saturated by its own return, be
/// deferred again, and wait twice as long each time.
pub fn deferral_backoff(deferrals: u32) -> Duration {
    let base = Duration::from_secs(1 << deferrals.min(6)).min(Duration::from_secs(60));
    base / 2 + spread(base)
}

impl Permit {
    /// Reports the attempt's result.
    pub fn finish(mut self, success: bool) {
        self.finished = true;
        self.breakers.clone().release(&self, Some(success));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished {
            self.breakers.clone().release(self, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig { threshold: 3, cooldown: Duration::from_millis(50), max_in_flight: 2 }
    }

    async fn go(b: &Arc<Breakers>) -> Permit {
        match b.admit("s", 0).await {
            Admission::Go(p) => p,
            Admission::Defer { why, .. } => panic!("deferred: {why}"),
        }
    }

    async fn deferred(b: &Arc<Breakers>, cap: u32) -> &'static str {
        match b.admit("s", cap).await {
            Admission::Go(_) => panic!("admitted"),
            Admission::Defer { why, .. } => why,
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_probes_and_closes() {
        let b = Breakers::new(config());
        go(&b).await.finish(false);
        go(&b).await.finish(false);
        assert!(!b.is_open("s"));
        go(&b).await.finish(false);
        assert!(b.is_open("s"));
        assert_eq!(deferred(&b, 0).await, "circuit open");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let probe = go(&b).await;
        assert_eq!(deferred(&b, 0).await, "circuit half-open, probe in flight");
        probe.finish(true);
        assert!(!b.is_open("s"));
        go(&b).await.finish(true);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens() {
        let b = Breakers::new(config());
        for _ in 0..3 {
            go(&b).await.finish(false);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        go(&b).await.finish(false);
        assert_eq!(deferred(&b, 0).await, "circuit open");
    }

    #[tokio::test]
    async fn a_success_resets_the_count() {
        let b = Breakers::new(config());
        go(&b).await.finish(false);
        go(&b).await.finish(false);
        go(&b).await.finish(true);
        go(&b).await.finish(false);
        go(&b).await.finish(false);
        assert!(!b.is_open("s"));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_a_delivery_waits_briefly_then_is_deferred() {
        let b = Breakers::new(config());
        let p1 = go(&b).await;
        let _p2 = go(&b).await;
        // A slot freed while waiting is taken.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { matches!(b.admit("s", 0).await, Admission::Go(_)) }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(p1);
        assert!(waiter.await.unwrap());
        // No slot within the wait: deferred.
        let _p3 = go(&b).await;
        assert_eq!(deferred(&b, 0).await, "subscription at its in-flight limit");
    }

    #[tokio::test]
    async fn only_healthy_fast_endpoints_are_fit_for_inline_attempts() {
        let b = Breakers::new(config());
        assert!(b.fit_for_inline("s"), "unknown yet");
        go(&b).await.finish(true);
        assert!(b.fit_for_inline("s"));
        go(&b).await.finish(false);
        assert!(!b.fit_for_inline("s"), "failing");
        go(&b).await.finish(true);
        assert!(b.fit_for_inline("s"), "healthy again");
        b.states.lock().unwrap().get_mut("s").unwrap().latency = SLOW / 2;
        assert!(!b.fit_for_inline("s"), "slow");
    }

    #[test]
    fn deferrals_back_off_and_a_burst_of_them_comes_back_spread_out() {
        for (deferrals, base) in [(0, 1.0), (1, 2.0), (3, 8.0), (6, 60.0), (20, 60.0)] {
            let samples: Vec<f64> = (0..500).map(|_| deferral_backoff(deferrals).as_secs_f64()).collect();
            assert!(samples.iter().all(|d| (base * 0.5..base * 1.5).contains(d)), "{deferrals}: {samples:?}");
            // Spread over the whole range: no tenth of it holds more than a fifth of the burst.
            let mut tenths = [0usize; 10];
            for d in &samples {
                tenths[((d / base - 0.5) * 10.0) as usize] += 1;
            }
            assert!(tenths.iter().all(|&n| n < 100), "{deferrals}: {tenths:?}");
        }
    }

    #[tokio::test]
    async fn idle_healthy_subscriptions_are_swept() {
        let b = Breakers::new(config());
        go(&b).await.finish(true);
        b.sweep();
        assert!(b.states.lock().unwrap().is_empty());
        for _ in 0..3 {
            go(&b).await.finish(false);
        }
        b.sweep();
        assert!(b.is_open("s"), "an open circuit is kept");
    }
}
