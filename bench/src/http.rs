//! HTTP/1.1 keep-alive client for OIP v2 servers: the [`Endpoint`] the
//! driver loads, plus one-off requests for metadata, readiness and the admin
//! API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::endpoint::{Endpoint, Outcome, Stages, Status};
use crate::workload::Request;

/// TLS for `https://` servers: the CA to trust and the name to check.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// Trusts the CA certificates in the PEM file `ca` for server `host`.
    pub fn new(ca: &std::path::Path, host: &str) -> Result<Tls> {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.with_context(|| format!("{}: not PEM certificates", ca.display()))?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            name: ServerName::try_from(host.to_string())
                .with_context(|| format!("{host} is not a server name"))?,
        })
    }
}

/// `Some(host)` when `url` is `https://host[:port]...`.
pub fn tls_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    Some(hostport.rsplit_once(':').map_or(hostport, |(h, _)| h))
}

/// Resolves `http://host:port` or `https://host:port` (a trailing path is
/// ignored).
pub async fn resolve(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolving {url}"))?
        .next()
        .with_context(|| format!("{url} resolves to no address"))
}

/// Sends `request` over keep-alive connections to `addr`.
pub struct HttpEndpoint {
    pub addr: SocketAddr,
    pub request: Request,
    pub tls: Option<Tls>,
}

/// One open connection; the task driving it stops when this is dropped.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl HttpConn {
    /// Opens a keep-alive connection to `addr`.
    pub async fn open(addr: SocketAddr) -> Result<HttpConn> {
        HttpConn::open_with(addr, None).await
    }

    /// Opens a keep-alive connection to `addr`, over TLS when `tls` is set.
    pub async fn open_with(addr: SocketAddr, tls: Option<&Tls>) -> Result<HttpConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        // Owned by the HttpConn and aborted with it: not detached.
        let (sender, driver) = match tls {
            None => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                (
                    sender,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
            Some(tls) => {
                let stream = tls.connector.connect(tls.name.clone(), stream).await?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                (
                    sender,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
        };
        Ok(HttpConn { sender, driver })
    }

    /// One request (made by [`build`]) on this connection, its whole
    /// answer read.
    pub async fn request(&mut self, req: hyper::Request<Full<Bytes>>) -> Result<Reply> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let version = header_u32(resp.headers(), "x-quiver-model-version");
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            body,
            version,
        })
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A request to `addr` with these headers and body.
pub fn build(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    Ok(req.body(Full::new(body))?)
}

fn header_u32(headers: &HeaderMap, name: &str) -> Option<u32> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

/// The stage timings Quiver reports in its response headers.
pub fn stages(headers: &HeaderMap) -> Stages {
    Stages {
        queue_us: header_u32(headers, "x-quiver-queue-us"),
        compute_us: header_u32(headers, "x-quiver-compute-us"),
        total_us: header_u32(headers, "x-quiver-total-us"),
        batch_size: header_u32(headers, "x-quiver-batch-size"),
        version: header_u32(headers, "x-quiver-model-version"),
    }
}

impl Endpoint for HttpEndpoint {
    type Conn = HttpConn;

    async fn connect(&self) -> Result<HttpConn> {
        HttpConn::open_with(self.addr, self.tls.as_ref()).await
    }

    async fn call(&self, conn: &mut HttpConn) -> Outcome {
        let r = &self.request;
        let mut headers = vec![];
        match r.header_len {
            Some(n) => {
                headers.push(("inference-header-content-length", n.to_string()));
                headers.push(("content-type", "application/octet-stream".to_string()));
            }
            None => headers.push(("content-type", "application/json".to_string())),
        }
        let Ok(req) = build(self.addr, "POST", &r.path, &headers, r.body.clone()) else {
            return Outcome::failed(Status::Io);
        };
        if conn.sender.ready().await.is_err() {
            return Outcome::failed(Status::Io);
        }
        let Ok(resp) = conn.sender.send_request(req).await else {
            return Outcome::failed(Status::Io);
        };
        let status = resp.status().as_u16();
        let stages = stages(resp.headers());
        // The whole body is read, as a real client would, before the
        // request counts as answered.
        match resp.into_body().collect().await {
            Ok(_) => Outcome {
                status: Status::Answered(status),
                stages,
            },
            Err(_) => Outcome::failed(Status::Io),
        }
    }
}

/// An answer to a one-off request.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    /// Quiver's `x-quiver-model-version` header, when present.
    pub version: Option<u32>,
}

/// One request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Reply> {
    send_with(addr, None, method, path, headers, body).await
}

/// One request on a fresh connection, over TLS when `tls` is set.
pub async fn send_with(
    addr: SocketAddr,
    tls: Option<&Tls>,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Reply> {
    let req = build(addr, method, path, headers, body)?;
    HttpConn::open_with(addr, tls).await?.request(req).await
}

/// `GET path` as JSON, failing on a non-2xx answer.
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    get_json_with(addr, None, path).await
}

/// As [`get_json`], over TLS when `tls` is set.
pub async fn get_json_with(
    addr: SocketAddr,
    tls: Option<&Tls>,
    path: &str,
) -> Result<serde_json::Value> {
    let reply = send_with(addr, tls, "GET", path, &[], Bytes::new()).await?;
    if !(200..300).contains(&reply.status) {
        bail!(
            "GET {path} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    serde_json::from_slice(&reply.body).with_context(|| format!("GET {path}: not JSON"))
}

/// Waits until `GET /v2/health/ready` answers 200.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<()> {
    wait_ready_with(addr, None, timeout).await
}

/// As [`wait_ready`], over TLS when `tls` is set.
pub async fn wait_ready_with(addr: SocketAddr, tls: Option<&Tls>, timeout: Duration) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if let Ok(r) = send_with(addr, tls, "GET", "/v2/health/ready", &[], Bytes::new()).await
            && r.status == 200
        {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{addr} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
