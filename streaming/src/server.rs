//! The streaming HTTP server: registers requests under single-use tokens and
//! upgrades the client's connection to SPDY/3.1 or WebSocket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tracing::{debug, info, warn};

use crate::cache::{CacheError, Pending, RequestCache};
use crate::protocol::{
    HEADER_ACCEPTED_PROTOCOL_VERSIONS, HEADER_PROTOCOL_VERSION, PORTFORWARD_V1, SPDY_31,
    SPDY_REMOTECOMMAND, WS_PORTFORWARD, WS_REMOTECOMMAND, negotiate,
};
use crate::runtime::{AttachRequest, ExecRequest, PortForwardRequest, StreamingRuntime};
use crate::spdy::{ConnConfig, Connection, Role};
use crate::{portforward, remotecommand};

/// Settings of the streaming server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free one.
    pub address: SocketAddr,
    /// Scheme, host and port put in returned URLs; defaults to
    /// `http://<bound address>`.
    pub base_url: Option<String>,
    /// How long a client has to open all the streams of a session.
    pub stream_creation_timeout: Duration,
    /// How long a returned URL stays valid.
    pub request_ttl: Duration,
    /// Requests waiting for their clients, at most.
    pub max_in_flight: usize,
    /// SPDY session tunables.
    pub spdy: ConnConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            stream_creation_timeout: Duration::from_secs(30),
            request_ttl: Duration::from_secs(60),
            max_in_flight: 1000,
            spdy: ConnConfig::default(),
        }
    }
}

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address could not be bound
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A streaming request was refused; `Invalid` maps to gRPC InvalidArgument.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request is invalid
    #[error("{0}")]
    Invalid(&'static str),
    /// The server holds too many pending requests
    #[error(transparent)]
    Busy(#[from] CacheError),
}

struct Inner {
    runtime: Arc<dyn StreamingRuntime>,
    cache: RequestCache,
    config: ServerConfig,
}

/// The running streaming server; dropping it stops accepting connections.
pub struct StreamingServer {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    base_url: String,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("local_addr", &self.local_addr)
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn validate_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), RequestError> {
    if tty && stderr {
        return Err(RequestError::Invalid("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(RequestError::Invalid(
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

impl StreamingServer {
    /// Binds `config.address` and starts serving.
    pub async fn bind(
        config: ServerConfig,
        runtime: Arc<dyn StreamingRuntime>,
    ) -> Result<Self, BindError> {
        let listener =
            TcpListener::bind(config.address)
                .await
                .map_err(|source| BindError::Listen {
                    addr: config.address,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| BindError::Listen {
            addr: config.address,
            source,
        })?;
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"))
            .trim_end_matches('/')
            .to_owned();
        let inner = Arc::new(Inner {
            runtime,
            cache: RequestCache::new(config.request_ttl, config.max_in_flight),
            config,
        });
        info!(%local_addr, "streaming server listening");
        let accept = tokio::spawn(accept_loop(listener, inner.clone()));
        Ok(Self {
            inner,
            local_addr,
            base_url,
            accept,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The prefix of returned URLs.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Registers an exec and returns the URL its client must connect to.
    pub fn get_exec(&self, req: ExecRequest) -> Result<String, RequestError> {
        if req.container_id.is_empty() {
            return Err(RequestError::Invalid("missing required container_id"));
        }
        if req.cmd.is_empty() {
            return Err(RequestError::Invalid("missing required cmd"));
        }
        validate_stdio(req.tty, req.stdin, req.stdout, req.stderr)?;
        let token = self.inner.cache.insert(Pending::Exec(req))?;
        Ok(format!("{}/exec/{token}", self.base_url))
    }

    /// Registers an attach and returns the URL its client must connect to.
    pub fn get_attach(&self, req: AttachRequest) -> Result<String, RequestError> {
        if req.container_id.is_empty() {
            return Err(RequestError::Invalid("missing required container_id"));
        }
        validate_stdio(req.tty, req.stdin, req.stdout, req.stderr)?;
        let token = self.inner.cache.insert(Pending::Attach(req))?;
        Ok(format!("{}/attach/{token}", self.base_url))
    }

    /// Registers a port forward and returns the URL its client must connect to.
    pub fn get_port_forward(&self, req: PortForwardRequest) -> Result<String, RequestError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(RequestError::Invalid("missing required pod_sandbox_id"));
        }
        if req.ports.contains(&0) {
            return Err(RequestError::Invalid("port 0 cannot be forwarded"));
        }
        let token = self.inner.cache.insert(Pending::PortForward(req))?;
        Ok(format!("{}/portforward/{token}", self.base_url))
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("streaming server accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(inner.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await
            {
                debug!(%peer, "streaming connection ended: {e}");
            }
        });
    }
}

fn plain(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(msg.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let Some(("port", value)) = pair.split_once('=') else {
            continue;
        };
        for p in value.split(',').filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("invalid port {p:?}")),
                Ok(port) => ports.push(port),
            }
        }
    }
    Ok(ports)
}

async fn handle(
    inner: Arc<Inner>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    let Some(pending) = inner.cache.consume(token) else {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "unknown or expired streaming token",
        ));
    };
    let matches_kind = matches!(
        (kind, &pending),
        ("exec", Pending::Exec(_))
            | ("attach", Pending::Attach(_))
            | ("portforward", Pending::PortForward(_))
    );
    if !matches_kind {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "token is for another operation",
        ));
    }
    let headers = req.headers();
    let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade");
    if is_upgrade && header_has_token(headers, header::UPGRADE, "websocket") {
        return Ok(upgrade_websocket(inner, &mut req, pending));
    }
    if is_upgrade && header_has_token(headers, header::UPGRADE, SPDY_31) {
        return Ok(upgrade_spdy(inner, &mut req, pending));
    }
    Ok(plain(
        StatusCode::BAD_REQUEST,
        "unable to upgrade: missing upgrade headers in request",
    ))
}

fn upgrade_spdy(
    inner: Arc<Inner>,
    req: &mut Request<Incoming>,
    pending: Pending,
) -> Response<Full<Bytes>> {
    let supported: &[&'static str] = match pending {
        Pending::PortForward(_) => &[PORTFORWARD_V1],
        _ => SPDY_REMOTECOMMAND,
    };
    let offered = header_values(req.headers(), HEADER_PROTOCOL_VERSION);
    let protocol = if offered.is_empty() {
        // Clients from before version negotiation speak the first version.
        supported[supported.len() - 1]
    } else {
        match negotiate(&offered, supported) {
            Some(p) => p,
            None => {
                let mut resp = plain(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
                    ),
                );
                for p in supported {
                    resp.headers_mut().append(
                        HEADER_ACCEPTED_PROTOCOL_VERSIONS,
                        HeaderValue::from_static(p),
                    );
                }
                return resp;
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                warn!("SPDY upgrade failed: {e}");
                return;
            }
        };
        let conn = Connection::new(
            TokioIo::new(upgraded),
            Role::Server,
            inner.config.spdy.clone(),
        );
        let timeout = inner.config.stream_creation_timeout;
        let runtime = inner.runtime.clone();
        match pending {
            Pending::Exec(r) => {
                remotecommand::serve_spdy(
                    conn,
                    protocol,
                    remotecommand::Command::Exec(r),
                    runtime,
                    timeout,
                )
                .await
            }
            Pending::Attach(r) => {
                remotecommand::serve_spdy(
                    conn,
                    protocol,
                    remotecommand::Command::Attach(r),
                    runtime,
                    timeout,
                )
                .await
            }
            Pending::PortForward(r) => {
                portforward::serve_spdy(conn, r.pod_sandbox_id, runtime, timeout).await
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(SPDY_31));
    if !offered.is_empty() {
        h.insert(HEADER_PROTOCOL_VERSION, HeaderValue::from_static(protocol));
    }
    resp
}

fn upgrade_websocket(
    inner: Arc<Inner>,
    req: &mut Request<Incoming>,
    pending: Pending,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return plain(StatusCode::BAD_REQUEST, "unsupported WebSocket version");
    }
    let accept = derive_accept_key(key.as_bytes());
    let supported = match pending {
        Pending::PortForward(_) => WS_PORTFORWARD,
        _ => WS_REMOTECOMMAND,
    };
    let offered = header_values(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
    let protocol: Option<&'static str> = if offered.is_empty() {
        None
    } else {
        match negotiate(&offered, supported) {
            Some(p) => Some(p),
            None => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("unable to upgrade: none of the subprotocols {offered:?} is supported"),
                );
            }
        }
    };
    let ports = match &pending {
        Pending::PortForward(r) => {
            let mut ports = match query_ports(req.uri().query()) {
                Ok(p) => p,
                Err(e) => return plain(StatusCode::BAD_REQUEST, e),
            };
            if ports.is_empty() {
                ports = r.ports.clone();
            }
            if ports.is_empty() {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "query parameter \"port\" is required",
                );
            }
            ports
        }
        _ => Vec::new(),
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                warn!("WebSocket upgrade failed: {e}");
                return;
            }
        };
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, None).await;
        let protocol = protocol.unwrap_or("");
        let runtime = inner.runtime.clone();
        match pending {
            Pending::Exec(r) => {
                remotecommand::serve_websocket(
                    ws,
                    protocol,
                    remotecommand::Command::Exec(r),
                    runtime,
                )
                .await
            }
            Pending::Attach(r) => {
                remotecommand::serve_websocket(
                    ws,
                    protocol,
                    remotecommand::Command::Attach(r),
                    runtime,
                )
                .await
            }
            Pending::PortForward(r) => {
                portforward::serve_websocket(ws, protocol, r.pod_sandbox_id, ports, runtime).await
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_repeated_or_comma_separated_parameters() {
        assert_eq!(
            query_ports(Some("port=80&x=1&port=81,82")).unwrap(),
            [80, 81, 82]
        );
        assert_eq!(query_ports(None).unwrap(), Vec::<u16>::new());
        assert!(query_ports(Some("port=0")).is_err());
        assert!(query_ports(Some("port=http")).is_err());
    }

    #[test]
    fn stdio_validation() {
        assert!(validate_stdio(true, true, true, true).is_err());
        assert!(validate_stdio(false, false, false, false).is_err());
        assert!(validate_stdio(true, true, true, false).is_ok());
        assert!(validate_stdio(false, false, false, true).is_ok());
    }
}
