//! What to do after one attempt: the single place that decides between ack, retry later and
//! dead-letter, including what a subscriber's `Retry-After` asks for.

use std::time::{Duration, SystemTime};

use herald_core::retry::RetryPolicy;

/// Why an attempt failed, in a few stable words for the attempt record and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// No answer within the timeout.
    Timeout,
    /// Could not connect (refused, reset, DNS).
    Connection,
    /// The TLS handshake failed (untrusted, expired or misnamed certificate, no common
    /// version): retried like a connection failure, since certificates get fixed.
    Tls,
    /// An answer arrived, but not a 2xx.
    HttpStatus,
    /// Anything else in building or sending the request.
    Request,
    /// The SSRF guard refused the destination: not transient, never retried.
    Refused,
    /// A broker refused the destination's credentials (or they do not open with the keys).
    Auth,
    /// A broker refused the write: an AMQP exchange that does not exist, a message no queue
    /// takes, a Redis key of another type, a JetStream error.
    Broker,
    /// The subscription's transformation threw, ran out of time or memory, or returned no
    /// webhook: retried, so that a fixed script lets the delivery through.
    Transformation,
}

impl ErrorClass {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Tls => "tls",
            Self::HttpStatus => "http_status",
            Self::Request => "request",
            Self::Refused => "refused",
            Self::Auth => "auth",
            Self::Broker => "broker",
            Self::Transformation => "transformation",
        }
    }
}

/// How one HTTP attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptResult {
    /// The response status, if a response arrived.
    pub status: Option<u16>,
    /// What went wrong, if anything (transport error, non-2xx summary).
    pub error: Option<String>,
    /// The failure's class, if it failed.
    pub class: Option<ErrorClass>,
    /// What the subscriber's `Retry-After` asked for (on 429 and 503 only).
    pub retry_after: Option<Duration>,
    /// A broker destination confirmed the write (there is no status to look at).
    pub confirmed: bool,
}

impl AttemptResult {
    /// A 2xx arrived.
    pub fn succeeded(&self) -> bool {
        self.confirmed || self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Parses a `Retry-After` value, in seconds or as an HTTP date, relative to `now`. A date in the
/// past means "now"; garbage means nothing.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The decision for one delivery after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// The subscriber answered 2xx: ack.
    Delivered,
    /// Try again after `after`, holding no consumer slot meanwhile.
    Retry {
        /// The delay before the next attempt.
        after: Duration,
    },
    /// The subscription's transformation cancelled it: nothing is sent, and it is done with.
    Cancelled,
    /// The schedule is exhausted: dead-letter with `reason`.
    DeadLetter {
        /// For a person reading the dead letter.
        reason: String,
    },
}

/// Decides what follows attempt number `attempt` (1-based). A `Retry-After` replaces the
/// schedule's delay for that retry, clamped to `retry_after_max`; it does not add attempts.
pub fn decide(
    policy: &RetryPolicy,
    attempt: u32,
    result: &AttemptResult,
    retry_after_max: Duration,
) -> DeliveryOutcome {
    if result.succeeded() {
        return DeliveryOutcome::Delivered;
    }
    if result.class == Some(ErrorClass::Refused) {
        let why = result.error.as_deref().unwrap_or("refused by the SSRF guard");
        return DeliveryOutcome::DeadLetter { reason: format!("not delivered: {why}") };
    }
    match policy.delay_after(attempt) {
        Some(scheduled) => {
            let after = result.retry_after.map_or(scheduled, |asked| asked.min(retry_after_max));
            DeliveryOutcome::Retry { after }
        }
        None => DeliveryOutcome::DeadLetter {
            reason: format!(
                "gave up after {attempt} attempts; last: {}",
                result.error.as_deref().unwrap_or("no error recorded")
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: Option<u16>) -> AttemptResult {
        AttemptResult { status, error: Some("boom".into()), ..Default::default() }
    }

    #[test]
    fn decisions() {
        let p = RetryPolicy::new(vec![Duration::from_secs(1), Duration::from_secs(2)], 0.0);
        let max = Duration::from_secs(3600);
        let ok = AttemptResult { status: Some(204), ..Default::default() };
        assert_eq!(decide(&p, 1, &ok, max), DeliveryOutcome::Delivered);
        assert_eq!(decide(&p, 1, &failed(Some(500)), max), DeliveryOutcome::Retry { after: Duration::from_secs(1) });
        assert_eq!(decide(&p, 2, &failed(None), max), DeliveryOutcome::Retry { after: Duration::from_secs(2) });
        assert!(
            matches!(decide(&p, 3, &failed(Some(302)), max), DeliveryOutcome::DeadLetter { reason } if reason.contains("3 attempts") && reason.contains("boom"))
        );
    }

    #[test]
    fn retry_after_replaces_the_delay_and_is_clamped() {
        let p = RetryPolicy::new(vec![Duration::from_secs(5), Duration::from_secs(5)], 0.0);
        let mut r = failed(Some(429));
        r.retry_after = Some(Duration::from_secs(120));
        assert_eq!(
            decide(&p, 1, &r, Duration::from_secs(3600)),
            DeliveryOutcome::Retry { after: Duration::from_secs(120) }
        );
        assert_eq!(
            decide(&p, 1, &r, Duration::from_secs(60)),
            DeliveryOutcome::Retry { after: Duration::from_secs(60) }
        );
        // It does not extend the schedule.
        assert!(matches!(decide(&p, 3, &r, Duration::from_secs(60)), DeliveryOutcome::DeadLetter { .. }));
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
