//! What every gRPC server of the federation carries besides its own
//! services: the standard health service and reflection, so stock tools
//! (grpcurl, grpc_health_probe) work against any process.

use tonic_health::server::HealthReporter;

/// The federation's codec: prost's, except that a message that does not
/// decode is the sender's fault, `INVALID_ARGUMENT` (prost's codec answers
/// `INTERNAL`, which a sender may retry for ever). Every service and client
/// of the contract is generated with it (`build.rs`): a client that cannot
/// decode a peer's answer hears INVALID_ARGUMENT too, and an outbox sets
/// such an item aside rather than resend it without end.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(tonic_prost::ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(tonic_prost::ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(self.0.decoder())
    }
}

/// prost's decoder, its failures `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
pub struct Decoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<U>, tonic::Status> {
        self.0.decode(buf).map_err(|s| {
            tonic::Status::invalid_argument(format!("the message does not decode: {}", s.message()))
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}

/// A response that says a request was larger than the server takes:
/// tonic's `OUT_OF_RANGE` ("decoded message length too large"), in the
/// response's headers.
fn too_large(headers: &tonic::codegen::http::HeaderMap) -> bool {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()) == Some("11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.replace("%20", " ")
                    .starts_with("Error, decoded message length too large")
            })
}

/// The response type of a layer of [`size_status_layer`].
type Response<B> = tonic::codegen::http::Response<B>;

/// A layer of every server: a request over the size limit answers
/// `RESOURCE_EXHAUSTED`, as gRPC's own servers do, where tonic says
/// `OUT_OF_RANGE`.
pub fn size_status_layer<B>() -> tower::util::MapResponseLayer<fn(Response<B>) -> Response<B>> {
    tower::util::MapResponseLayer::new(size_status::<B>)
}

fn size_status<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    if too_large(response.headers()) {
        response.headers_mut().insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("8"),
        );
    }
    response
}

/// The reflection service over the contract's descriptors.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// The health service, and its reporter; `serving` lists the services to
/// mark SERVING now (the overall status "" is always marked).
pub async fn health(
    serving: &[&str],
) -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in serving.iter().chain(std::iter::once(&"")) {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    (reporter, service)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A client endpoint with the federation's timeouts: `addr` is
/// `host:port` or a URI; `timeout` bounds each call (none for long-lived
/// streams).
pub fn endpoint(
    addr: &str,
    timeout: Option<std::time::Duration>,
) -> Result<tonic::transport::Endpoint, String> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| format!("address {addr:?}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Ok(match timeout {
        Some(t) => endpoint.timeout(t),
        None => endpoint,
    })
}

/// Whether a failed call may succeed if sent again later (the peer is down,
/// busy, or not ready for it yet), as opposed to a refusal for good.
pub fn is_transient(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    )
}
