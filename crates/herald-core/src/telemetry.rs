//! Logs and traces, on the ecosystem's libraries: `tracing` for both, the OpenTelemetry SDK
//! (`opentelemetry_sdk`, exported by `opentelemetry-otlp`) for traces, bridged by
//! `tracing-opentelemetry` — so Herald's own spans (ingest → JetStream publish → fan-out → each
//! webhook attempt) and any its libraries emit at `info` are exported the same way.
//!
//! Configured only by the standard variables: export is on when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`
//! do not turn it off); the SDK itself reads `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_{PROTOCOL,HEADERS,TIMEOUT,COMPRESSION}` and
//! `OTEL_BSP_*` (a bounded queue; spans beyond it are dropped, never waited for).
//!
//! Off, Herald's spans are not even created ([`span!`](crate::otel_span) gives
//! `Span::none()`); the `traceparent` a subscriber receives is then derived as before, without
//! the SDK, so trace context still flows from publisher to subscriber.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// True when spans are exported: Herald then creates them.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A span when exporting, `Span::none()` otherwise (which costs nothing). Takes what
/// `tracing::info_span!` takes; `otel.kind`, `otel.status_code` and `otel.name` fields are read
/// by the OpenTelemetry bridge.
#[macro_export]
macro_rules! otel_span {
    ($($args:tt)*) => {
        if $crate::telemetry::exporting() {
            ::tracing::info_span!($($args)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// A span when exporting and `parent` (a [`Carrier`]) does not say its trace is unsampled;
/// `Span::none()` otherwise. Herald follows the sampling decision it was handed, as the
/// `parentbased_*` samplers (the default) and `traceidratio` (the same decision for the same
/// trace id) do, so an unsampled trace costs a dispatcher nothing but passing its
/// `traceparent` on.
#[macro_export]
macro_rules! traced_span {
    ($parent:expr, $($args:tt)*) => {
        if $crate::telemetry::traced($parent) {
            ::tracing::info_span!($($args)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// True when exporting and `parent` carries no unsampled trace context.
pub fn traced(parent: &Carrier) -> bool {
    exporting() && parent.traceparent.as_deref().is_none_or(is_sampled)
}

fn is_sampled(traceparent: &str) -> bool {
    traceparent.get(53..55).and_then(|f| u8::from_str_radix(f, 16).ok()).is_some_and(|flags| flags & 1 == 1)
}

/// Flushes and stops the exporter when dropped (end of `main`).
#[must_use = "spans are flushed when the guard is dropped"]
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("exporting", &self.provider.is_some()).finish()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("OpenTelemetry: flushing spans at exit failed: {e}");
        }
    }
}

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// No export.
    Off(&'static str),
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
    /// OTLP over gRPC.
    Grpc,
}

/// Reads the standard variables (through `var`, for tests).
pub fn export_from(var: impl Fn(&str) -> Option<String>) -> Export {
    let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Export::Off("OTEL_SDK_DISABLED=true");
    }
    if set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none")) {
        return Export::Off("OTEL_TRACES_EXPORTER=none");
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() && set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Export::Off("no OTEL_EXPORTER_OTLP_ENDPOINT");
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref().map(str::trim) {
        Some("grpc") => Export::Grpc,
        _ => Export::HttpProtobuf,
    }
}

/// Starts logging to stderr (filter from `HERALD_LOG`, default `info`; JSON lines with
/// `HERALD_LOG_FORMAT=json`) and, when the environment asks for it, span export for `service`
/// (the `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one).
/// A second call (tests running services in-process) changes nothing.
pub fn init(service: &str) -> Guard {
    let filter = || EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("HERALD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter()).boxed()
    } else {
        // Colours only for a terminal: a log file or a pod's log gets plain text (and formatting
        // every request span's fields without escape codes costs less).
        let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt::layer().with_ansi(colours).with_writer(std::io::stderr).with_filter(filter()).boxed()
    };
    let (provider, problem) = match export_from(|k| std::env::var(k).ok()) {
        Export::Off(_) => (None, None),
        how => match provider(service, &how) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
    };
    let otel = provider.as_ref().map(|p| {
        // Spans at `info` and above from any target, whatever HERALD_LOG says about logs.
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("herald"))
            // Code locations, threads and busy/idle times are not worth their cost per delivery.
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let installed = tracing_subscriber::registry().with(fmt).with(otel).try_init().is_ok();
    if !installed {
        return Guard { provider: None };
    }
    if let Some(e) = problem {
        tracing::error!(error = %e, "OpenTelemetry: span export is off");
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(propagator());
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!("exporting OpenTelemetry spans over OTLP (OTEL_* variables)");
    }
    Guard { provider }
}

fn provider(service: &str, how: &Export) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = match how {
        Export::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| e.to_string())?,
        #[cfg(feature = "otlp-grpc")]
        Export::Grpc => opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(|e| e.to_string())?,
        #[cfg(not(feature = "otlp-grpc"))]
        Export::Grpc => {
            return Err("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs a build with the `otlp-grpc` feature; \
                        use http/protobuf (port 4318)"
                .into());
        }
        Export::Off(why) => return Err((*why).into()),
    };
    let resource = opentelemetry_sdk::Resource::builder();
    // The SDK's detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the binary's name
    // applies only when neither names the service.
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let resource = if named { resource } else { resource.with_service_name(service.to_owned()) };
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new("service.version", crate::VERSION))
        .with_attributes(kubernetes_attributes(|k| std::env::var(k).ok()))
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// `k8s.*` resource attributes from the variables the Helm chart fills from the downward API
/// (`K8S_POD_NAME`, `K8S_NAMESPACE_NAME`, `K8S_NODE_NAME`), unless `OTEL_RESOURCE_ATTRIBUTES`
/// already sets them.
pub fn kubernetes_attributes(var: impl Fn(&str) -> Option<String>) -> Vec<opentelemetry::KeyValue> {
    let given = var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    [("K8S_POD_NAME", "k8s.pod.name"), ("K8S_NAMESPACE_NAME", "k8s.namespace.name"), ("K8S_NODE_NAME", "k8s.node.name")]
        .into_iter()
        .filter(|(_, key)| !given.contains(&format!("{key}=")))
        .filter_map(|(env, key)| var(env).filter(|v| !v.is_empty()).map(|v| opentelemetry::KeyValue::new(key, v)))
        .collect()
}

fn propagator() -> opentelemetry::propagation::TextMapCompositePropagator {
    opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
        Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
    ])
}

fn shared_propagator() -> &'static opentelemetry::propagation::TextMapCompositePropagator {
    static P: OnceLock<opentelemetry::propagation::TextMapCompositePropagator> = OnceLock::new();
    P.get_or_init(propagator)
}

/// W3C trace context as it travels in headers: `traceparent`, and `tracestate` and `baggage`
/// when the caller sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carrier {
    /// `traceparent`.
    pub traceparent: Option<String>,
    /// `tracestate`.
    pub tracestate: Option<String>,
    /// `baggage`.
    pub baggage: Option<String>,
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            "baggage" => self.baggage.as_deref(),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate", "baggage"]
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value),
            "baggage" => self.baggage = Some(value),
            _ => {}
        }
    }
}

impl Carrier {
    /// Only a `traceparent`.
    pub fn of(traceparent: Option<&str>) -> Self {
        Self { traceparent: traceparent.map(str::to_owned), ..Self::default() }
    }

    /// What a message's (or a request's) headers carry, through `get`; an invalid
    /// `traceparent` is no context at all.
    pub fn read<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        let Some(traceparent) = get("traceparent").filter(|t| crate::trace::is_valid(t)) else {
            return Self::default();
        };
        let short = |v: &&str| !v.is_empty() && v.len() <= 8192;
        Self {
            traceparent: Some(traceparent.to_owned()),
            tracestate: get("tracestate").filter(short).map(str::to_owned),
            baggage: get("baggage").filter(short).map(str::to_owned),
        }
    }

    /// What NATS message headers carry.
    pub fn from_nats(headers: Option<&async_nats::HeaderMap>) -> Self {
        match headers {
            Some(h) => Self::read(|k| h.get(k).map(|v| v.as_str())),
            None => Self::default(),
        }
    }

    /// Adds the carried headers to a JetStream publish.
    pub fn add_to(
        &self,
        mut publish: async_nats::jetstream::message::PublishMessage,
    ) -> async_nats::jetstream::message::PublishMessage {
        for (name, value) in
            [("traceparent", &self.traceparent), ("tracestate", &self.tracestate), ("baggage", &self.baggage)]
        {
            if let Some(v) = value {
                publish = publish.header(name, v.as_str());
            }
        }
        publish
    }
}

/// Makes `span` a child of the context `parent` carries (when exporting and it carries one).
pub fn set_parent(span: &tracing::Span, parent: &Carrier) {
    if span.is_none() || parent.traceparent.as_deref().is_none_or(|t| !crate::trace::is_valid(t)) {
        return;
    }
    let cx = shared_propagator().extract(parent);
    let _ = span.set_parent(cx);
}

/// The context to send onward from `span` (to NATS, or to a subscriber): the span's own when
/// exporting — sampled or not, so a subscriber always gets a valid `traceparent` —, else a new
/// child of `parent`'s `traceparent` with its `tracestate` and `baggage` kept. Also records
/// `trace_id` and `span_id` on the span, so the log lines inside it carry them.
pub fn onward(span: &tracing::Span, parent: &Carrier) -> Carrier {
    if !span.is_none() {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.record("trace_id", tracing::field::display(sc.trace_id()));
            span.record("span_id", tracing::field::display(sc.span_id()));
            let mut out = Carrier::default();
            shared_propagator().inject_context(&cx, &mut out);
            return out;
        }
    }
    Carrier {
        traceparent: Some(crate::trace::child_of(parent.traceparent.as_deref())),
        tracestate: parent.tracestate.clone(),
        baggage: parent.baggage.clone(),
    }
}

/// The trace id of the current span when it is exported and sampled (for exemplars).
pub fn current_trace_id() -> Option<String> {
    if !exporting() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

/// Sets an attribute on an exported span (nothing when not exporting).
pub fn attribute(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if !span.is_none() {
        span.set_attribute(key, value);
    }
}

/// True when `span` is exported and sampled: only then are its attributes worth setting (an
/// unsampled span costs as little as it can: its fields are the ids log lines need).
pub fn sampled(span: &tracing::Span) -> bool {
    !span.is_none() && span.context().span().span_context().is_sampled()
}

/// Marks `span` failed with `why` (or succeeded).
pub fn set_outcome(span: &tracing::Span, error: Option<&str>) {
    if span.is_none() {
        return;
    }
    match error {
        Some(why) => span.set_status(opentelemetry::trace::Status::error(why.to_owned())),
        None => span.set_status(opentelemetry::trace::Status::Ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_turns_export_on_and_off() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert!(matches!(export_from(env(&[])), Export::Off(_)));
        assert_eq!(export_from(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])), Export::HttpProtobuf);
        assert_eq!(
            export_from(env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            ])),
            Export::Grpc
        );
        assert!(matches!(
            export_from(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")])),
            Export::Off(_)
        ));
        assert!(matches!(
            export_from(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_EXPORTER", "none")])),
            Export::Off(_)
        ));
    }

    #[test]
    fn kubernetes_attributes_come_from_the_downward_api_unless_given() {
        let vars = |k: &str| match k {
            "K8S_POD_NAME" => Some("gw-1".to_owned()),
            "K8S_NODE_NAME" => Some("node-a".to_owned()),
            "OTEL_RESOURCE_ATTRIBUTES" => Some("k8s.node.name=given".to_owned()),
            _ => None,
        };
        let attrs = kubernetes_attributes(vars);
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].key.as_str(), "k8s.pod.name");
    }

    #[test]
    fn unsampled_parents_are_followed() {
        assert!(is_sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!is_sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        assert!(!traced(&Carrier::default()), "not exporting in unit tests");
    }

    #[test]
    fn without_export_onward_context_is_a_child_that_keeps_state_and_baggage() {
        let parent = Carrier {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("vendor=1".into()),
            baggage: Some("user=7".into()),
        };
        let out = onward(&tracing::Span::none(), &parent);
        let tp = out.traceparent.unwrap();
        assert!(crate::trace::is_valid(&tp));
        assert_eq!(&tp[3..35], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(&tp[36..52], "00f067aa0ba902b7");
        assert_eq!((out.tracestate.as_deref(), out.baggage.as_deref()), (Some("vendor=1"), Some("user=7")));
    }
}
