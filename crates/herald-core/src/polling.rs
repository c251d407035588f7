//! Polling endpoints: a subscription with `destination: {"type": "polling"}` is not pushed to.
//! Fan-out stores its deliveries in [`STREAM`], on the subscription's own subject, and its
//! consumer reads them in stream order through the gateway
//! (`GET /v1/subscriptions/{id}/poll`), acknowledging what it has read by passing the cursor it
//! was given; how far it acknowledged is kept in [`CURSORS_BUCKET`].

use std::time::Duration;

use async_nats::jetstream::{kv, stream};

use crate::proto;

/// The stream of polling subscriptions' deliveries, `herald.poll.{tenant}.{subscription_id}`.
pub const STREAM: &str = "HERALD_POLL";
/// The bucket of how far each polling subscription's consumer has acknowledged (a sequence of
/// [`STREAM`]), keyed by subscription id.
pub const CURSORS_BUCKET: &str = "herald-poll-cursors";

/// `herald.poll.{tenant}.{subscription_id}`.
pub fn subject(tenant: &str, subscription_id: &str) -> String {
    format!("herald.poll.{tenant}.{subscription_id}")
}

/// True if `sub` is read by polling rather than pushed to.
pub fn is_polling(sub: &proto::Subscription) -> bool {
    sub.destination.as_ref().is_some_and(|d| d.r#type == crate::destination::POLLING)
}

/// [`STREAM`]: kept as long as the events (`max_age`), deduplicated like deliveries.
pub fn stream_config(max_age: Duration, duplicate_window: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        description: Some("Herald: polling subscriptions' deliveries, herald.poll.{tenant}.{subscription_id}".into()),
        subjects: vec!["herald.poll.>".into()],
        retention: stream::RetentionPolicy::Limits,
        max_age,
        duplicate_window,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// [`CURSORS_BUCKET`].
pub fn cursors_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: CURSORS_BUCKET.into(),
        description: "Herald: how far each polling subscription has acknowledged, keyed by id".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// A cursor as the API gives it out: the last sequence of [`STREAM`] it covers.
pub fn cursor(sequence: u64) -> String {
    format!("pc_{sequence}")
}

/// The sequence a cursor covers, if it is one.
pub fn parse_cursor(text: &str) -> Option<u64> {
    text.strip_prefix("pc_")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_nothing_else_parses() {
        assert_eq!(parse_cursor(&cursor(42)), Some(42));
        for bad in ["42", "pc_", "pc_-1", "pc_x", ""] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }
}
