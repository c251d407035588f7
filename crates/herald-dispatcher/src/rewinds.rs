//! Noticing a consumer that hands out again, as new, what it had handed out before.
//!
//! On a cluster, a consumer's new leader starts from the state the old one had replicated:
//! messages the old leader handed out (and saw acked) shortly before it failed can come again
//! with a delivery count of 1, under consumer sequences already used. Nothing else marks them,
//! so every message is checked here against the highest consumer sequence this replica has
//! seen from its consumer: one at or below it was handed out before, and its attempt record
//! is consulted before anything is sent. Replicas share a consumer's sequence, so each sees
//! such a rewind in its own share of the messages.

use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::jetstream;

use herald_core::metrics;

/// A sequence further than this below the highest seen is not a rewind but a consumer made
/// anew under the same name (the ordered fan-out's, a lane's): counting starts again there.
const MAX_REWIND: u64 = 100_000;

/// The highest consumer sequence seen per consumer.
#[derive(Debug, Default)]
pub(crate) struct Rewinds {
    highest: Mutex<HashMap<Box<str>, u64>>,
}

impl Rewinds {
    /// True if `msg` may have been handed out before although its delivery count says not:
    /// its consumer sequence is not above every one this replica has seen from its consumer.
    pub(crate) fn handed_out_before(&self, msg: &jetstream::Message) -> bool {
        let Ok(info) = msg.info() else { return false };
        self.seen(info.consumer, info.consumer_sequence)
    }

    fn seen(&self, consumer: &str, sequence: u64) -> bool {
        let mut highest = self.highest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match highest.get_mut(consumer) {
            Some(h) if sequence <= *h && *h - sequence < MAX_REWIND => {
                metrics::CONSUMER_REWINDS.inc(&[]);
                true
            }
            Some(h) => {
                *h = sequence;
                false
            }
            None => {
                highest.insert(consumer.into(), sequence);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_not_above_the_highest_seen_is_a_rewind_per_consumer() {
        let r = Rewinds::default();
        assert!(!r.seen("a", 1));
        assert!(!r.seen("a", 5));
        assert!(!r.seen("b", 2), "each consumer has its own sequence");
        assert!(r.seen("a", 3), "handed out again under a used sequence");
        assert!(r.seen("a", 5));
        assert!(!r.seen("a", 6), "past the highest: new again");
        assert!(r.seen("b", 2));
        assert!(!r.seen("a", 6 + MAX_REWIND));
        assert!(!r.seen("a", 1), "far below: the consumer was made anew");
        assert!(!r.seen("a", 2));
    }
}
