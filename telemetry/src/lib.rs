//! Logs and traces for the federation's processes.
//!
//! - [`init`] sets up logging (`RUST_LOG`, `info` by default) and, when the
//!   standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exports the `tracing`
//!   spans over OTLP/gRPC to it, batched on the process's Tokio runtime.
//! - The W3C trace context (`traceparent`) travels in gRPC metadata
//!   ([`traced`], [`grpc_span`]) and, across a durable outbox, in the row
//!   of each queued item ([`traceparent`], [`span_from`]): one ticket's
//!   dispatch is one trace from the origin node through the gateway to the
//!   target node, although every hop commits and forwards later.
//!
//! Without an endpoint nothing is exported and no trace context is made or
//! sent: spans are then only the logs' context.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("traces not all exported at exit: {e}");
        }
    }
}

/// Whether the environment asks for traces.
pub fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// Sets up logging and, when an OTLP endpoint is configured, trace export.
/// `service` is the `service.name` of the spans; `attributes` more of the
/// resource (the city of a node, for instance). Must be called inside the
/// Tokio runtime.
pub fn init(service: &str, attributes: &[(&str, &str)]) -> anyhow::Result<Guard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colour for a person at a terminal, none in a log file.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_filter(filter());
    let Some(endpoint) = otlp_endpoint() else {
        tracing_subscriber::registry().with(fmt).try_init()?;
        return Ok(Guard { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot export traces to {endpoint}: {e}"))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attributes(
            attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string())),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("hotline");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Spans at info and above are exported, whatever RUST_LOG says of logs.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    tracing::info!(%endpoint, service, "exporting traces over OTLP");
    Ok(Guard {
        provider: Some(provider),
    })
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

fn has_trace(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// Puts the current span's trace context into an outgoing request.
pub fn inject(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    if has_trace(&cx) {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

/// A message as an outgoing request that carries the current trace.
pub fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    inject(request.metadata_mut());
    request
}

struct HeaderExtractor<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span each gRPC request is served in (for tonic's
/// `Server::builder().trace_fn`): named by its method, child of the
/// caller's trace when the request carries one.
pub fn grpc_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let method = request.uri().path();
    let span = tracing::info_span!(
        "grpc",
        otel.name = method.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc"
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    if has_trace(&parent) {
        let _ = span.set_parent(parent);
    }
    span
}

/// The current span's trace context as a `traceparent` value, to keep with
/// work queued for later; `None` when there is no trace.
pub fn traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !has_trace(&cx) {
        return None;
    }
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map.remove("traceparent")
}

/// A span for work queued earlier, child of the trace it was queued in.
pub fn span_from(name: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("work", otel.name = name, otel.kind = "client");
    if let Some(tp) = traceparent {
        let carrier: HashMap<String, String> = HashMap::from([("traceparent".into(), tp.into())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if has_trace(&parent) {
            let _ = span.set_parent(parent);
        }
    }
    span
}
