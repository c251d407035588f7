//! What to do after one attempt: the single place that decides between ack, retry later and
//! dead-letter.

use std::time::Duration;

use herald_core::retry::RetryPolicy;

/// How one HTTP attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// The response status, if a response arrived.
    pub status: Option<u16>,
    /// What went wrong, if anything (transport error, non-2xx summary).
    pub error: Option<String>,
}

impl AttemptResult {
    /// A 2xx arrived.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
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
    /// The schedule is exhausted: dead-letter with `reason`.
    DeadLetter {
        /// For a person reading the dead letter.
        reason: String,
    },
}

/// Decides what follows attempt number `attempt` (1-based).
pub fn decide(policy: &RetryPolicy, attempt: u32, result: &AttemptResult) -> DeliveryOutcome {
    if result.succeeded() {
        return DeliveryOutcome::Delivered;
    }
    match policy.delay_after(attempt) {
        Some(after) => DeliveryOutcome::Retry { after },
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
        AttemptResult { status, error: Some("boom".into()) }
    }

    #[test]
    fn decisions() {
        let p = RetryPolicy::new(vec![Duration::from_secs(1), Duration::from_secs(2)], 0.0);
        let ok = AttemptResult { status: Some(204), error: None };
        assert_eq!(decide(&p, 1, &ok), DeliveryOutcome::Delivered);
        assert_eq!(decide(&p, 1, &failed(Some(500))), DeliveryOutcome::Retry { after: Duration::from_secs(1) });
        assert_eq!(decide(&p, 2, &failed(None)), DeliveryOutcome::Retry { after: Duration::from_secs(2) });
        assert!(
            matches!(decide(&p, 3, &failed(Some(302))), DeliveryOutcome::DeadLetter { reason } if reason.contains("3 attempts") && reason.contains("boom"))
        );
    }
}
