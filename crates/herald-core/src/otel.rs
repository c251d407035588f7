//! OpenTelemetry spans, exported over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and not even recorded otherwise. Herald's
//! spans are the hops of a webhook — ingest (gateway), fan-out and each attempt (dispatcher) —
//! each one the parent of the next through the `traceparent` carried in NATS headers and sent
//! to the subscriber, so one trace spans publisher → Herald → subscriber.
//!
//! The OTLP messages are declared here with prost (the field numbers of
//! `opentelemetry/proto/trace/v1`), which keeps the OpenTelemetry SDK and its HTTP stack out of
//! the build.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

/// OTLP wire messages (a subset of `opentelemetry.proto`; unknown fields are never sent).
pub mod wire {
    /// `ExportTraceServiceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    /// `ResourceSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    /// `Resource`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    /// `ScopeSpans`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    /// `InstrumentationScope`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    /// `Span`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// 2 server, 3 client, 4 producer, 5 consumer.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }
    /// `KeyValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    /// `AnyValue` (strings only, which is all Herald sends).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, tag = "1")]
        pub string_value: String,
    }
    /// `Status`: code 1 ok, 2 error.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
}

/// Span kinds Herald uses.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Handling an API request.
    Server = 2,
    /// A webhook request.
    Client = 3,
    /// Storing a message in NATS.
    Producer = 4,
    /// Taking a message from NATS.
    Consumer = 5,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// The span's own `traceparent` (its trace and span ids).
    pub traceparent: String,
    /// The parent's `traceparent`, if the span has one.
    pub parent: Option<String>,
    /// What happened: `POST /v1/events`, `fanout`, `webhook attempt`.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// When it started and ended.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Low-cardinality facts (ids, status): never secrets or payloads.
    pub attributes: Vec<(&'static str, String)>,
    /// Failed, with a message.
    pub error: Option<String>,
}

/// Records spans and sends them in batches; cheap to clone. Absent (`None`) when no endpoint is
/// configured, so spans then cost nothing.
#[derive(Debug, Clone)]
pub struct Tracer {
    tx: mpsc::Sender<SpanRecord>,
}

impl Tracer {
    /// Starts the exporter for `service` if `endpoint` is set (a base URL such as
    /// `http://collector:4318`, to which `/v1/traces` is added; a URL already ending in
    /// `/v1/traces` is used as is).
    pub fn start(endpoint: Option<&str>, service: &str) -> Option<Tracer> {
        let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty())?;
        let url = if endpoint.ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(export(url.clone(), service.to_owned(), rx));
        tracing::info!(endpoint = %url, "exporting OpenTelemetry spans over OTLP/HTTP");
        Some(Tracer { tx })
    }

    /// Queues a finished span; dropped (never blocking a delivery) if the exporter lags.
    pub fn record(&self, span: SpanRecord) {
        let _ = self.tx.try_send(span);
    }
}

fn ids(traceparent: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut parts = traceparent.split('-');
    let (_, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str| {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>()
    };
    Some((hex(trace)?, hex(span)?))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn kv(key: &str, value: &str) -> wire::KeyValue {
    wire::KeyValue { key: key.to_owned(), value: Some(wire::AnyValue { string_value: value.to_owned() }) }
}

/// Encodes spans as one OTLP export request.
pub fn encode(service: &str, spans: &[SpanRecord]) -> Vec<u8> {
    let spans = spans
        .iter()
        .filter_map(|s| {
            let (trace_id, span_id) = ids(&s.traceparent)?;
            let parent_span_id = s.parent.as_deref().and_then(ids).map(|(_, p)| p).unwrap_or_default();
            Some(wire::Span {
                trace_id,
                span_id,
                parent_span_id,
                name: s.name.to_owned(),
                kind: s.kind as i32,
                start_time_unix_nano: nanos(s.start),
                end_time_unix_nano: nanos(s.end),
                attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                status: Some(match &s.error {
                    Some(message) => wire::Status { message: message.clone(), code: 2 },
                    None => wire::Status { message: String::new(), code: 1 },
                }),
            })
        })
        .collect();
    let request = wire::ExportTraceServiceRequest {
        resource_spans: vec![wire::ResourceSpans {
            resource: Some(wire::Resource { attributes: vec![kv("service.name", service)] }),
            scope_spans: vec![wire::ScopeSpans {
                scope: Some(wire::InstrumentationScope { name: "herald".into(), version: crate::VERSION.into() }),
                spans,
            }],
        }],
    };
    prost::Message::encode_to_vec(&request)
}

async fn export(url: String, service: String, mut rx: mpsc::Receiver<SpanRecord>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(10)).build() else { return };
    let http = Arc::new(http);
    let mut batch = Vec::new();
    loop {
        let more = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        match more {
            Ok(Some(span)) => {
                batch.push(span);
                if batch.len() < 512 {
                    continue;
                }
            }
            Ok(None) if batch.is_empty() => return,
            Ok(None) | Err(_) => {}
        }
        if batch.is_empty() {
            continue;
        }
        let body = encode(&service, &batch);
        batch.clear();
        let sent = http.post(&url).header("content-type", "application/x-protobuf").body(body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::debug!(status = %r.status(), "the OTLP collector refused spans"),
            Err(e) => tracing::debug!(error = %e, "could not export spans"),
        }
    }
}
