//! Reading a slice of a stream for the query endpoints (attempts, dead letters, replay): an
//! ephemeral ordered consumer with a subject filter and a start point, read up to what was
//! pending when it was created, so a query always ends.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;

use crate::error::ApiError;

/// One stored message.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub sequence: u64,
    pub time: OffsetDateTime,
    pub subject: String,
    pub headers: Option<async_nats::HeaderMap>,
    pub payload: Bytes,
}

impl Stored {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name).map(|v| v.as_str())
    }
}

/// Where a scan starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum From {
    Beginning,
    Time(OffsetDateTime),
    Sequence(u64),
}

impl From {
    /// Where a listing's page starts: after the previous page's `next` (a stream sequence), or
    /// at `since`, or at the beginning.
    pub(crate) fn page(after: Option<u64>, since: Option<OffsetDateTime>) -> Self {
        match (after, since) {
            (Some(after), _) => Self::Sequence(after + 1),
            (None, Some(t)) => Self::Time(t),
            (None, None) => Self::Beginning,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "stream scan failed");
    ApiError::unavailable(format!("could not read from NATS ({e}); retry later"))
}

/// Scans each `(stream, filters)` as [`scan`] does and merges what they hold by the time it was
/// stored (the partitions of one kind: their sequences are their own).
pub(crate) async fn scan_each(
    js: &jetstream::Context,
    slices: Vec<(String, Vec<String>)>,
    from: From,
    until: Option<OffsetDateTime>,
    max: usize,
) -> Result<Vec<Stored>, ApiError> {
    let mut all = Vec::new();
    for (stream, filters) in slices {
        all.extend(scan(js, &stream, filters, from, until, max).await?);
    }
    all.sort_by_key(|s| (s.time, s.sequence));
    Ok(all)
}

/// Reads the messages of `stream` matching `filters`, from `from`, until the end as it was when
/// the scan began, `until` (exclusive), or `max` messages, whichever comes first.
pub(crate) async fn scan(
    js: &jetstream::Context,
    stream: &str,
    filters: Vec<String>,
    from: From,
    until: Option<OffsetDateTime>,
    max: usize,
) -> Result<Vec<Stored>, ApiError> {
    let mut scanner = Scanner::open(js, stream, filters, from, until, max, Read::Whole).await?;
    let mut out = Vec::with_capacity(scanner.pending.min(max).min(1024));
    while let Some(stored) = scanner.next().await? {
        out.push(stored);
    }
    Ok(out)
}

/// What a scan reads of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    Whole,
    /// Headers only (JetStream's `headers_only`): a search by id reads no payload but the match's.
    HeadersOnly,
}

/// How long one scan may read before it gives up: a request holds the gateway's memory and
/// NATS's attention for no longer.
pub(crate) const SCAN_TIME: Duration = Duration::from_secs(20);

/// A scan read one message at a time, so what it holds is one message (and the client's pull
/// batch), however many it goes through.
pub(crate) struct Scanner {
    messages: Option<futures::stream::Take<consumer::pull::Ordered>>,
    pending: usize,
    from: From,
    until: Option<OffsetDateTime>,
    deadline: tokio::time::Instant,
    /// The stream, to fetch a message whole by its sequence.
    stream: jetstream::stream::Stream,
}

impl Scanner {
    /// Starts reading as [`scan`] does.
    pub(crate) async fn open(
        js: &jetstream::Context,
        stream: &str,
        filters: Vec<String>,
        from: From,
        until: Option<OffsetDateTime>,
        max: usize,
        read: Read,
    ) -> Result<Self, ApiError> {
        let stream = js.get_stream(stream).await.map_err(unavailable)?;
        let deliver_policy = match from {
            From::Beginning => consumer::DeliverPolicy::All,
            From::Time(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
            From::Sequence(start_sequence) => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence: start_sequence.max(1) }
            }
        };
        let config = consumer::pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy,
            headers_only: read == Read::HeadersOnly,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(unavailable)?;
        let pending = consumer.cached_info().num_pending as usize;
        let messages = if pending == 0 {
            None
        } else {
            Some(consumer.messages().await.map_err(unavailable)?.take(pending.min(max)))
        };
        let deadline = tokio::time::Instant::now() + SCAN_TIME;
        Ok(Self { messages, pending, from, until, deadline, stream })
    }

    /// The next message of the slice, or `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Stored>, ApiError> {
        let Some(messages) = self.messages.as_mut() else { return Ok(None) };
        loop {
            let wait =
                Duration::from_secs(10).min(self.deadline.saturating_duration_since(tokio::time::Instant::now()));
            let next = match tokio::time::timeout(wait, messages.next()).await {
                Ok(next) => next,
                Err(_) if tokio::time::Instant::now() >= self.deadline => {
                    return Err(ApiError::unavailable(format!(
                        "the scan took longer than {} s and was stopped; narrow it (since, until, a tenant)",
                        SCAN_TIME.as_secs()
                    )));
                }
                Err(_) => return Err(unavailable("timed out")),
            };
            let Some(msg) = next else { return Ok(None) };
            let msg = msg.map_err(unavailable)?;
            let info = msg.info().map_err(unavailable)?;
            let (sequence, time) = (info.stream_sequence, info.published);
            if self.until.is_some_and(|u| time >= u) {
                return Ok(None);
            }
            // nats-server starts a consumer whose start time is past the last message at the
            // stream's first one instead (2.15): what is older than the start is not in the slice.
            if let From::Time(start) = self.from
                && time < start
            {
                continue;
            }
            return Ok(Some(Stored {
                sequence,
                time,
                subject: msg.subject.to_string(),
                headers: msg.headers.clone(),
                payload: msg.payload.clone(),
            }));
        }
    }

    /// The message at `sequence`, whole (after a headers-only scan found it).
    pub(crate) async fn whole(&mut self, sequence: u64) -> Result<Stored, ApiError> {
        let m = self.stream.get_raw_message(sequence).await.map_err(unavailable)?;
        Ok(Stored {
            sequence,
            time: m.time,
            subject: m.subject.to_string(),
            headers: Some(m.headers),
            payload: m.payload,
        })
    }
}

/// Parses an optional RFC 3339 query parameter.
pub(crate) fn parse_time(field: &'static str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ApiError::invalid(Some(field), format!("{field}: {v:?} is not an RFC 3339 time")))
        })
        .transpose()
}
