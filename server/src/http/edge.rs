//! The HTTP edge: what every connection and request passes before a handler sees it.
//!
//! 1. **Connections** ([`serve`]): HTTP/1.1 on hyper, with a timeout for reading a request's
//!    headers (a connection that sends half of them, or sits idle, is closed) and a cap on the
//!    connections open from one peer address at once (a trusted proxy is exempt).
//! 2. **Bodies**: an idle timeout between body frames (a client that promises 100 KB and sends
//!    one byte is answered `408` and the connection closed), and a size limit per route
//!    ([`limit_body`]: small by default, the sync and import routes have their own). A
//!    `Content-Length` over the limit is refused `413` at once (then at most twice the limit
//!    is read and dropped, for a second, so the client reads the answer; nothing is kept); a
//!    chunked body is cut at the limit.
//! 3. **The client's address** ([`client_addr`]): the TCP peer, or, when the peer is a trusted
//!    reverse proxy (`--trust-proxy CIDR`), the right-most untrusted address of
//!    `X-Forwarded-For` (else `X-Real-IP`). Rate limits and failure counts key on it.
//! 4. **Browsers** ([`same_origin`], [`security_headers`]): a POST whose `Origin` (or, without
//!    one, `Referer`) names another host is refused `403`, and so is a cookie-authenticated
//!    POST that names neither; every answer is `Cache-Control: no-store` unless its handler
//!    said otherwise, and may not be framed (`X-Frame-Options: DENY`, `frame-ancestors 'none'`).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::{ApiError, auth::ClientAddr};

/// How the edge treats connections and requests (`serve` flags; see README).
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Largest request body, in bytes, of every route but sync and import.
    pub body_limit: usize,
    /// Time a client has to send a request's headers (also how long an idle kept-alive
    /// connection stays open).
    pub header_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body.
    pub body_read_timeout: Duration,
    /// Connections open at once from one peer address (trusted proxies are not limited).
    pub max_connections_per_peer: usize,
    /// Reverse proxies whose `X-Forwarded-For` / `X-Real-IP` name the client.
    pub trust_proxy: Vec<IpNet>,
    /// The server is reached over TLS (at a reverse proxy): the session cookie is `Secure`
    /// and `__Host-` prefixed.
    pub public_https: bool,
    /// The token a scraper presents for `GET /metrics` (none: no metrics route).
    pub metrics_token: Option<super::ops::MetricsToken>,
    /// `GET /readyz` answers 503 while the read model leaves changes older than this
    /// uncounted.
    pub ready_lag: Duration,
    /// Serve HTTPS with this certificate and key (`--tls-cert`/`--tls-key`; [`tls_config`])
    /// instead of plain HTTP behind a TLS-terminating proxy.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// The default body limit: a login, a review or a task list fits many times over.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// The body limit of `POST /api/v1/orders/import` (at most 1,000 hotline orders).
pub const IMPORT_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// The body limit of `POST /orders/import`, the import page's form: a file of at most
/// [`IMPORT_BODY_LIMIT`] bytes, or (its confirmation) that file again in base64, with the
/// form's other fields.
pub const IMPORT_PAGE_BODY_LIMIT: usize = IMPORT_BODY_LIMIT / 3 * 4 + 64 * 1024;

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            body_limit: DEFAULT_BODY_LIMIT,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections_per_peer: 64,
            trust_proxy: Vec::new(),
            public_https: false,
            metrics_token: None,
            ready_lag: Duration::from_secs(120),
            tls: None,
        }
    }
}

impl EdgeConfig {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trust_proxy.iter().any(|n| n.contains(&ip))
    }
}

/// Parses a `--trust-proxy` value: a CIDR (`10.0.0.0/8`) or one address.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR (10.0.0.0/8)"))
}

/// An address as written in a forwarding header: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`.
fn forwarded_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// The client of a request from TCP peer `peer`: the peer itself unless it is a trusted
/// proxy; then the right-most address of `X-Forwarded-For` that is not a trusted proxy (the
/// left-most if all are; entries left of an unreadable one are not believed), else
/// `X-Real-IP`, else the peer.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let trusts = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !trusts(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    if !hops.is_empty() {
        let mut client = peer;
        for hop in hops.iter().rev() {
            match forwarded_ip(hop) {
                Some(ip) => {
                    client = ip;
                    if !trusts(&ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        return client;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(forwarded_ip)
        .unwrap_or(peer)
}

/// Set on requests that came through a trusted proxy (its `X-Forwarded-Host` is believed).
#[derive(Clone, Copy, Debug)]
pub struct ViaTrustedProxy;

/// Open connections per peer address.
#[derive(Debug, Default)]
struct PeerConnections(Mutex<HashMap<IpAddr, usize>>);

/// One open connection, counted until dropped.
#[derive(Debug)]
struct ConnectionSlot {
    peers: Arc<PeerConnections>,
    ip: IpAddr,
}

impl PeerConnections {
    fn open(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ConnectionSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The TLS settings of a server from PEM files: the certificate chain (the server's first,
/// then its intermediates) and its private key. TLS 1.2 and 1.3, rustls' safe defaults.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("reading the certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the private key {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and the key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a peer over its connection cap reads before the connection is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 83\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections\"}}\n";

/// Serves `app` on `listener` until `stop` resolves, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    edge: Arc<EdgeConfig>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let peers = Arc::new(PeerConnections::default());
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let ip = peer.ip().to_canonical();
        let slot = if edge.trusts(ip) {
            None
        } else {
            match peers.open(ip, edge.max_connections_per_peer) {
                Some(slot) => Some(slot),
                None => {
                    tracing::warn!(peer = %ip, "connection refused: too many from this address");
                    let _ = stream.try_write(TOO_MANY_CONNECTIONS);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let config = edge.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let client = client_addr(peer.ip(), req.headers(), &config.trust_proxy);
                let timeout = config.body_read_timeout;
                let mut req =
                    req.map(|b| Body::new(tower_http::timeout::TimeoutBody::new(timeout, b)));
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(ClientAddr(client));
                if config.trusts(ip) {
                    req.extensions_mut().insert(ViaTrustedProxy);
                }
                app.clone().oneshot(req)
            });
        let http = {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(edge.header_read_timeout);
            b
        };
        let watcher = graceful.watcher();
        // With TLS, the handshake runs on the connection's own task within the header
        // timeout: a client that stalls in it holds one slot of its address, never the loop.
        let tls = edge.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let handshake_timeout = edge.header_read_timeout;
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight syncs");
    graceful.shutdown().await;
    Ok(())
}

/// A `413` for a body over `limit` bytes.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge {
        code: "too_large",
        message: format!("the body exceeds {limit} bytes"),
    }
}

/// What a body that could not be read is answered: `413` over the limit, `408` when the
/// client stopped sending (then the connection closes), else `400`.
pub fn body_error(e: axum::Error, limit: usize) -> ApiError {
    body_failure(&e, limit).unwrap_or(ApiError::BadRequest {
        code: "malformed",
        message: "the body could not be read".into(),
    })
}

/// The answer for an error whose causes include the body limit or the body timeout.
pub fn body_failure(e: &(dyn std::error::Error + 'static), limit: usize) -> Option<ApiError> {
    use http_body_util::LengthLimitError;
    use tower_http::timeout::TimeoutError;
    // axum's rejections keep the cause boxed once more (`Box<LengthLimitError>`).
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<LengthLimitError>() || s.is::<Box<LengthLimitError>>() {
            return Some(too_large(limit));
        }
        if s.is::<TimeoutError>() || s.is::<Box<TimeoutError>>() {
            return Some(ApiError::BodyTimeout);
        }
        source = s.source();
    }
    None
}

/// Middleware: a body over `limit` bytes is refused `413` — by its `Content-Length` before it
/// is read, or, chunked, when the limit is reached while reading it.
pub async fn limit_body(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(declared) = declared.filter(|n| *n > limit as u64) {
        // Answered at once, and the connection closes after. Until then a little of the body
        // is read and dropped (never kept), so that a client still sending it reads the
        // answer instead of a reset connection.
        let cap = declared.min(2 * limit as u64);
        tokio::spawn(discard(req.into_body(), cap));
        let mut resp = too_large(limit).into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit)));
    next.run(req).await
}

/// How long a refused body is waited for ([`discard`]).
const LINGER: Duration = Duration::from_secs(1);

/// Reads and drops up to `cap` bytes of `body`, while they keep coming ([`LINGER`]).
async fn discard(mut body: Body, cap: u64) {
    use http_body_util::BodyExt;
    let mut seen = 0u64;
    while seen < cap {
        match tokio::time::timeout(LINGER, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => break,
        }
    }
}

/// Where a browser says a request comes from: the authority (`host:port`) of its `Origin`,
/// or, without one, of its `Referer`. `Some(None)` for an opaque origin (`null`) or one that
/// does not parse, `None` when neither header is there.
fn claimed_origin(headers: &HeaderMap) -> Option<Option<String>> {
    let value = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))?;
    let authority = value.to_str().ok().and_then(|v| {
        let rest = v
            .strip_prefix("https://")
            .or_else(|| v.strip_prefix("http://"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        // No credentials in an origin.
        (!authority.is_empty() && !authority.contains('@')).then(|| authority.to_ascii_lowercase())
    });
    Some(authority)
}

/// The cross-site rule for a request ([`same_origin`]); `Err` with why it is refused.
pub fn check_origin(
    method: &Method,
    headers: &HeaderMap,
    via_proxy: bool,
) -> Result<(), &'static str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    // A bearer token is not sent by a browser on its own: nothing to forge.
    if headers.get(header::AUTHORIZATION).is_some_and(|v| {
        v.as_bytes().len() > 7 && v.as_bytes()[..7].eq_ignore_ascii_case(b"bearer ")
    }) {
        return Ok(());
    }
    let host = via_proxy
        .then(|| headers.get("x-forwarded-host"))
        .flatten()
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .map(|h| {
            h.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match claimed_origin(headers) {
        Some(Some(origin)) if host.as_deref() == Some(origin.as_str()) => Ok(()),
        Some(_) => Err("the request comes from another site"),
        None if super::auth::has_session_cookie(headers) => {
            Err("a signed-in form must say where it comes from (Origin or Referer)")
        }
        None => Ok(()),
    }
}

/// Middleware: refuses cross-site POSTs ([`check_origin`]) with `403 cross_origin` (a page's
/// form: the error page, in Chinese).
pub async fn same_origin(req: Request, next: Next) -> Response {
    let via_proxy = req.extensions().get::<ViaTrustedProxy>().is_some();
    match check_origin(req.method(), req.headers(), via_proxy) {
        Ok(()) => next.run(req).await,
        Err(_)
            if !req.uri().path().starts_with("/api/") && !req.uri().path().starts_with("/v1/") =>
        {
            super::pages::cross_site_refused()
        }
        Err(why) => ApiError::Forbidden {
            code: "cross_origin",
            message: why.into(),
        }
        .into_response(),
    }
}

/// Middleware: answers are not cached (shared office PCs) unless the handler set a policy,
/// and never framed by another page.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted = vec![
            parse_cidr("10.0.0.0/8").unwrap(),
            parse_cidr("192.168.1.5").unwrap(),
        ];
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4")]);
        // An untrusted peer's header is ignored.
        assert_eq!(client_addr(ip("8.8.8.8"), &xff, &trusted), ip("8.8.8.8"));
        // Trusted: the right-most untrusted hop (6.6.6.6 is whatever the client wrote).
        assert_eq!(client_addr(ip("10.1.1.1"), &xff, &trusted), ip("1.2.3.4"));
        // Chained trusted proxies are skipped; several header lines are one list.
        let chained = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "192.168.1.5"),
        ]);
        assert_eq!(
            client_addr(ip("10.1.1.1"), &chained, &trusted),
            ip("1.2.3.4")
        );
        // Ports and brackets are read; IPv4-mapped IPv6 is IPv4.
        let ported = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            client_addr(ip("::ffff:10.0.0.1"), &ported, &trusted),
            ip("2001:db8::1")
        );
        // Garbage right of the client: nothing left of it is believed.
        let garbage = headers(&[("x-forwarded-for", "1.2.3.4, nonsense")]);
        assert_eq!(
            client_addr(ip("10.0.0.1"), &garbage, &trusted),
            ip("10.0.0.1")
        );
        let real = headers(&[("x-real-ip", "5.6.7.8")]);
        assert_eq!(client_addr(ip("10.0.0.1"), &real, &trusted), ip("5.6.7.8"));
        assert_eq!(
            client_addr(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        assert!(parse_cidr("10.0.0.0/33").is_err() && parse_cidr("x").is_err());
    }

    #[test]
    fn posts_from_another_site_or_signed_in_without_an_origin_are_refused() {
        let post = Method::POST;
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(check_origin(&post, &same, false), Ok(()));
        let cross = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(check_origin(&post, &cross, false).is_err());
        assert_eq!(
            check_origin(&Method::GET, &cross, false),
            Ok(()),
            "GET is not checked"
        );
        let null = headers(&[("host", "a"), ("origin", "null")]);
        assert!(check_origin(&post, &null, false).is_err());
        let referer = headers(&[("host", "a:1"), ("referer", "http://a:1/households/x")]);
        assert_eq!(check_origin(&post, &referer, false), Ok(()));
        let bad_referer = headers(&[("host", "a:1"), ("referer", "http://a:1@evil/")]);
        assert!(check_origin(&post, &bad_referer, false).is_err());
        let cookie = headers(&[("host", "a"), ("cookie", "qiaomen_session=qm_s_x")]);
        assert!(
            check_origin(&post, &cookie, false).is_err(),
            "signed in, no origin"
        );
        assert_eq!(
            check_origin(&post, &headers(&[("host", "a")]), false),
            Ok(())
        );
        let bearer = headers(&[
            ("host", "a"),
            ("origin", "http://b"),
            ("authorization", "Bearer qm_s_x"),
        ]);
        assert_eq!(check_origin(&post, &bearer, false), Ok(()));
        // Behind a trusted proxy the public host is the forwarded one.
        let proxied = headers(&[
            ("host", "backend:8080"),
            ("x-forwarded-host", "qiaomen.example.cn"),
            ("origin", "https://qiaomen.example.cn"),
        ]);
        assert_eq!(check_origin(&post, &proxied, true), Ok(()));
        assert!(check_origin(&post, &proxied, false).is_err());
    }
}
