//! TLS on both doors, end to end with the real gateway binary: HTTPS with
//! `curl --cacert` against a CA made here, gRPC with `tritonclient.grpc`
//! over TLS, mutual TLS refusing a client without a certificate, a clean
//! failure (never a hang) for plaintext on a TLS port, and a certificate
//! rotated under load with no failed request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use quiver_tests::{Gateway, example_models, scratch};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};

/// A CA and what it signs, written as PEM files.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    fn new(dir: PathBuf) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Quiver test CA");
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let ca_der = ca.der().clone();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca_der,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Signs a certificate for localhost / 127.0.0.1 and writes
    /// `<name>.pem` and `<name>.key` (each by rename, as a secret manager
    /// mounting new files does); returns its DER.
    fn issue(&self, name: &str, client: bool) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        for (file, text) in [
            (format!("{name}.key"), key.serialize_pem()),
            (format!("{name}.pem"), cert.pem()),
        ] {
            let tmp = self.dir.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.dir.join(file)).unwrap();
        }
        cert.der().clone()
    }
}

fn curl(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn tls_env<'a>(pki: &'a Pki, extra: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
    let mut env = vec![
        (
            "QUIVER_TLS__CERT_PATH",
            pki.path("server.pem").display().to_string(),
        ),
        (
            "QUIVER_TLS__KEY_PATH",
            pki.path("server.key").display().to_string(),
        ),
    ];
    env.extend(extra.iter().cloned());
    env
}

async fn start(pki: &Pki, extra: &[(&str, String)]) -> Gateway {
    let env = tls_env(pki, extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start(&example_models(), &["--grpc-addr", "127.0.0.1:0"], &env).unwrap();
    let url = format!("https://127.0.0.1:{}/v2/health/ready", gw.addr.port());
    let ca = pki.path("ca.pem");
    for _ in 0..600 {
        let (code, out) = curl(&["--cacert", &ca.to_string_lossy(), &url]);
        if code == 0 && out.contains("\"ready\":true") {
            return gw;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway not ready over HTTPS; log:\n{}", gw.log());
}

fn python() -> String {
    std::env::var("QUIVER_PYTHON")
        .expect("QUIVER_PYTHON must name the venv's python: eval \"$(scripts/setup.sh)\"")
}

/// tritonclient.grpc over TLS: `ssl=True` with the test CA; and a
/// plaintext channel to the same port, which must fail fast.
async fn grpc_over_tls(grpc: std::net::SocketAddr, ca: &Path) -> String {
    let script = format!(
        r#"
import grpc, numpy as np, tritonclient.grpc as g
from tritonclient.utils import InferenceServerException
ca = open({ca:?}, "rb").read()
c = g.InferenceServerClient(url="localhost:{port}", ssl=True, root_certificates={ca:?})
assert c.is_server_ready(), "not ready over TLS"
x = np.ones((2, 16), np.float32)
i = g.InferInput("features", [2, 16], "FP32"); i.set_data_from_numpy(x)
y = c.infer("mlp", [i]).as_numpy("probabilities")
assert y.shape == (2, 4), y.shape
plain = g.InferenceServerClient(url="127.0.0.1:{port}")
try:
    plain.is_server_live(client_timeout=10)
    raise SystemExit("plaintext gRPC to the TLS port succeeded")
except InferenceServerException as e:
    assert e.status() == "StatusCode.UNAVAILABLE", e.status()
print("grpc tls ok")
"#,
        ca = ca.display().to_string(),
        port = grpc.port()
    );
    let out = tokio::process::Command::new(python())
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn https_and_grpc_over_tls_and_plaintext_fails_cleanly() {
    let pki = Pki::new(scratch("tls-basic").unwrap());
    pki.issue("server", false);
    let gw = start(&pki, &[]).await;
    let ca = pki.path("ca.pem");
    let port = gw.addr.port();

    let body = r#"{"inputs":[{"name":"features","datatype":"FP32","shape":[1,16],"data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]}"#;
    let (code, out) = curl(&[
        "--cacert",
        &ca.to_string_lossy(),
        "-H",
        "content-type: application/json",
        "-d",
        body,
        &format!("https://localhost:{port}/v2/models/mlp/infer"),
    ]);
    assert_eq!(code, 0, "HTTPS inference failed: {out}");
    assert!(out.contains("probabilities"), "{out}");

    // Without the CA, curl refuses the certificate (exit 60).
    let (code, out) = curl(&[&format!("https://localhost:{port}/v2/health/live")]);
    assert_eq!(code, 60, "an unknown CA was accepted: {out}");

    // Plaintext HTTP to the TLS port: the handshake fails at the first
    // bytes and the connection closes; curl's 28 would mean it hung.
    let (code, out) = curl(&[&format!("http://127.0.0.1:{port}/v2/health/live")]);
    assert!(
        code != 0 && code != 28,
        "plaintext to a TLS port: curl exit {code}: {out}"
    );

    let grpc = gw.grpc_addr.expect("gRPC address");
    let out = grpc_over_tls(grpc, &ca).await;
    assert!(out.contains("grpc tls ok"), "{out}\nlog:\n{}", gw.log());
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new(scratch("tls-mutual").unwrap());
    pki.issue("server", false);
    pki.issue("client", true);
    let ca = pki.path("ca.pem");
    let env = tls_env(
        &pki,
        &[("QUIVER_TLS__CLIENT_CA_PATH", ca.display().to_string())],
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start(&example_models(), &[], &env).unwrap();
    let url = format!("https://localhost:{}/v2/health/live", gw.addr.port());
    let with_cert = [
        "--cacert",
        &*ca.to_string_lossy(),
        "--cert",
        &*pki.path("client.pem").to_string_lossy(),
        "--key",
        &*pki.path("client.key").to_string_lossy(),
    ]
    .map(str::to_string);
    let mut ok = (0, String::new());
    for _ in 0..600 {
        let args: Vec<&str> = with_cert
            .iter()
            .map(String::as_str)
            .chain([url.as_str()])
            .collect();
        ok = curl(&args);
        if ok.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok.0, 0, "client with a certificate refused: {}", ok.1);
    assert!(ok.1.contains("\"live\":true"), "{}", ok.1);

    let (code, out) = curl(&["--cacert", &ca.to_string_lossy(), &url]);
    assert!(
        code != 0 && code != 28,
        "a client without a certificate got in (curl exit {code}): {out}"
    );
}

/// One request on a fresh TLS connection (so every request runs a
/// handshake with the certificate in use at that moment); returns the
/// status and the certificate the server presented.
async fn fresh_request(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
) -> Result<(u16, CertificateDer<'static>), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no server certificate")?
        .into_owned();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let body = r#"{"inputs":[{"name":"features","datatype":"FP32","shape":[1,16],"data":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}"#;
    let req = hyper::Request::post("/v2/models/mlp/infer")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    driver.abort();
    Ok((status, cert))
}

#[tokio::test]
async fn a_certificate_rotated_under_load_fails_no_request() {
    let pki = Pki::new(scratch("tls-rotate").unwrap());
    let first = pki.issue("server", false);
    let gw = start(
        &pki,
        &[("QUIVER_TLS__RELOAD_INTERVAL_MS", "100".to_string())],
    )
    .await;
    let port = gw.addr.port();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    // Four clients, each opening a new connection per request, until told
    // to stop; every failure is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed, rotated_seen) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
        Arc::new(AtomicU64::new(0)),
    );
    let new_cert = Arc::new(std::sync::Mutex::new(None::<CertificateDer<'static>>));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (connector, stop, sent, failed, seen, new_cert) = (
            connector.clone(),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&rotated_seen),
            Arc::clone(&new_cert),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match fresh_request(&connector, port).await {
                    Ok((200, cert)) => {
                        let is_new = new_cert.lock().unwrap().as_ref() == Some(&cert);
                        if is_new {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok((status, _)) => failed.lock().unwrap().push(format!("status {status}")),
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sent.load(Ordering::Relaxed);
    let second = pki.issue("server", false);
    assert_ne!(first, second);
    *new_cert.lock().unwrap() = Some(second);
    // Load keeps running until the new certificate has been served for a
    // while, or 30 s pass.
    for _ in 0..300 {
        if rotated_seen.load(Ordering::Relaxed) >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the rotation: {:?}",
        failed.len(),
        sent.load(Ordering::Relaxed),
        &failed[..failed.len().min(5)]
    );
    assert!(before > 0, "no load before the rotation");
    assert!(
        rotated_seen.load(Ordering::Relaxed) >= 50,
        "the new certificate was not served; log:\n{}",
        gw.log()
    );
    // /metrics is served over HTTPS here too.
    let (code, out) = curl(&[
        "--cacert",
        &pki.path("ca.pem").to_string_lossy(),
        &format!("https://localhost:{port}/metrics"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("quiver_tls_reloads_total{outcome=\"loaded\"}")),
        "no reload counted:\n{out}"
    );
}
