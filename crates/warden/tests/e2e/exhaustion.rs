//! Exhaustion from the outside, as an attacker would try it: idle and slow
//! connections, one address taking every connection, one key taking every
//! in-flight slot, unauthenticated floods, idle HTTP/2 clients at shutdown,
//! and path and name attacks on every path parameter. A legitimate client on
//! another loopback address (127.0.0.2) must be served throughout.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

use super::{Warden, iris};

const LEGIT: &str = "127.0.0.2";
const HTTP2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

pub(super) type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn config(dir: &Path, server: &str, extra: &str) -> PathBuf {
    let path = dir.join("warden.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
{server}

[limits.rates]
default = {{ rate = "100000/minute", burst = 100000 }}
predict = {{ rate = "100000/minute", burst = 100000 }}

{extra}
"#
        ),
    )
    .unwrap();
    path
}

/// A TLS connection from `source` (any loopback address) to the data plane,
/// handshake done.
fn tls(w: &Warden, source: &str, alpn: &str) -> std::io::Result<Tls> {
    tls_to(w, w.addr, source, alpn)
}

pub(super) fn tls_to(w: &Warden, to: SocketAddr, source: &str, alpn: &str) -> std::io::Result<Tls> {
    tls_with(w, to, source, alpn, None)
}

/// As [`tls_to`], with a small receive buffer when `rcvbuf` is given (a
/// client that reads slowly then stalls the server's writes quickly).
fn tls_with(
    w: &Warden,
    to: SocketAddr,
    source: &str,
    alpn: &str,
    rcvbuf: Option<u32>,
) -> std::io::Result<Tls> {
    let pem = std::fs::read(w.data_dir.join("tls/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&pem).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let sock = connect_from(source, to, rcvbuf)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A TCP connection bound to `source` before connecting.
fn connect_from(source: &str, to: SocketAddr, rcvbuf: Option<u32>) -> std::io::Result<TcpStream> {
    // std cannot bind before connecting; tokio's TcpSocket can, on a runtime
    // of its own in a thread of its own (callers may be inside a runtime).
    let source: IpAddr = source.parse().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let sock = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            if let Some(size) = rcvbuf {
                s.set_recv_buffer_size(size)?;
            }
            s.bind(SocketAddr::new(source, 0))?;
            s.connect(to).await
        })?;
        let std = sock.into_std()?;
        std.set_nonblocking(false)?;
        Ok(std)
    })
    .join()
    .unwrap()
}

/// Reads until the server closes the connection; how long that took.
fn closed_within(stream: &mut Tls, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if started.elapsed() > limit {
            return None;
        }
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return None;
            }
            // A close without close_notify, or a reset: closed all the same.
            Err(_) => return Some(started.elapsed()),
        }
    }
}

/// A client whose connections come from 127.0.0.2.
fn legit_client(w: &Warden) -> reqwest::Client {
    let pem = std::fs::read(w.data_dir.join("tls/ca.pem")).unwrap();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(LEGIT.parse::<IpAddr>().unwrap())
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

async fn legit_predict(w: &Warden, client: &reqwest::Client, key: &str) -> StatusCode {
    client
        .post(w.url("/v1/models/iris:predict"))
        .header("x-api-key", key)
        .json(&iris())
        .send()
        .await
        .map_or(StatusCode::REQUEST_TIMEOUT, |r| r.status())
}

fn predict_key(w: &Warden) -> String {
    let out = w.cli(&["keys", "create", "--name", "second", "--role", "predict"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .find(|w| w.starts_with("wdn_"))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_one_address_gets_only_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "header_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_connections_per_address = 4",
        "",
    );
    let w = Warden::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();

    // An attacker's idle connections: TLS done, then nothing (HTTP/1.1 and
    // HTTP/2 preface only). The address gets four; the fifth is closed at once.
    let mut idle: Vec<Tls> = (0..3)
        .map(|_| tls(&w, "127.0.0.1", "http/1.1").unwrap())
        .collect();
    let mut h2 = tls(&w, "127.0.0.1", "h2").unwrap();
    h2.write_all(HTTP2_PREFACE).unwrap();
    h2.flush().unwrap();
    assert!(
        tls(&w, "127.0.0.1", "http/1.1").is_err(),
        "a fifth connection from the same address is refused"
    );
    // Meanwhile a client on another address is served.
    let legit = legit_client(&w);
    assert_eq!(legit_predict(&w, &legit, &key).await, StatusCode::OK);

    // Nothing sent after the handshake: closed at the first-request deadline.
    for stream in &mut idle {
        let after =
            closed_within(stream, Duration::from_secs(8)).expect("an idle connection is closed");
        assert!(after < Duration::from_secs(4), "closed after {after:?}");
    }
    let after = closed_within(&mut h2, Duration::from_secs(8))
        .expect("an idle HTTP/2 connection is closed");
    assert!(after < Duration::from_secs(4), "closed after {after:?}");

    // The address has its slots back.
    let mut again = tls(&w, "127.0.0.1", "http/1.1").unwrap();
    // HTTP/2 after a request: open with no stream for idle_timeout, then
    // GOAWAY and close, although the client keeps the connection.
    let h2_client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .tls_certs_only([reqwest::Certificate::from_pem(
            &std::fs::read(w.data_dir.join("tls/ca.pem")).unwrap(),
        )
        .unwrap()])
        .build()
        .unwrap();
    closed_within(&mut again, Duration::from_secs(8)).expect("closed");
    let idle_closes = |metrics: &str| {
        metric(
            metrics,
            "warden_connections_closed_total{listener=\"data\",reason=\"idle\"}",
        )
    };
    let (_, metrics) = w.admin_text("/metrics", &key).await;
    let before = idle_closes(&metrics);
    assert!(before >= 5.0, "the idle connections above: {before}");
    let r = h2_client
        .post(w.url("/v1/models/iris:predict"))
        .header("x-api-key", &key)
        .json(&iris())
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status()),
        (reqwest::Version::HTTP_2, StatusCode::OK)
    );
    // The HTTP/2 client's connection is the only one open on the data plane
    // now; it is closed idle within idle_timeout (2 s) of its request.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = w.admin_text("/metrics", &key).await;
    assert_eq!(
        idle_closes(&metrics),
        before + 1.0,
        "the idle HTTP/2 connection was closed"
    );

    let refused = metric(
        &metrics,
        "warden_connections_refused_total{listener=\"data\",reason=\"per_address\"}",
    );
    assert!(refused >= 1.0, "{refused}");
    // The HTTP/2 client's connection was closed with a GOAWAY: it reconnects.
    let r = h2_client
        .post(w.url("/v1/models/iris:predict"))
        .header("x-api-key", &key)
        .json(&iris())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Warden {
    async fn admin_text(&self, path: &str, key: &str) -> (StatusCode, String) {
        let admin = self.admin.unwrap();
        let r = self
            .client
            .get(format!("https://localhost:{}{path}", admin.port()))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }
}

/// The status code of a raw HTTP/1.1 answer (0 if there is none), and the
/// answer as text.
fn status_and_text(answer: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Sends the head of a request whose body never (or slowly) follows.
fn start_request(stream: &mut Tls, key: &str, length: usize) {
    write!(
        stream,
        "POST /v1/models/iris:predict HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
    .unwrap();
    stream.flush().unwrap();
}

fn read_status(stream: &mut Tls) -> (u16, String) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    // The body follows the head (a small JSON envelope).
    if let Ok(n) = stream.read(&mut buf) {
        answer.extend_from_slice(&buf[..n]);
    }
    status_and_text(&answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_bodies_and_one_greedy_key_cannot_hold_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "min_body_rate = 200\nmin_send_rate = 200\ntransfer_window = \"3s\"\nidle_timeout = \"2s\"\nmax_in_flight_per_principal = 3",
        "",
    );
    let w = Warden::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let admin = w.printed_key.clone().unwrap();
    let greedy = predict_key(&w);

    // Three requests of one key whose bodies trickle in hold its three slots;
    // the fourth is refused at once, another key is served.
    let mut held: Vec<Tls> = (0..3)
        .map(|_| {
            let mut s = tls(&w, "127.0.0.1", "http/1.1").unwrap();
            start_request(&mut s, &greedy, 1000);
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, headers, body) = w
        .post("/v1/models/iris:predict", &greedy, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(headers["retry-after"], "1");
    let legit = legit_client(&w);
    assert_eq!(legit_predict(&w, &legit, &admin).await, StatusCode::OK);

    // Bodies below the minimum rate (a byte now and then) end with 400,
    // well before the 30 s request timeout, and the slots come back.
    let started = Instant::now();
    for _ in 0..4 {
        for s in &mut held {
            let _ = s.write_all(b" ");
            let _ = s.flush();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for s in &mut held {
        let (status, text) = read_status(s);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("too slowly"), "{text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let (status, _, body) = w
        .post("/v1/models/iris:predict", &greedy, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A steady body above the rate is read whole.
    let body = json!({"instances": vec![[5.1, 3.5, 1.4, 0.2]; 30]}).to_string();
    let mut steady = tls(&w, "127.0.0.1", "http/1.1").unwrap();
    start_request(&mut steady, &greedy, body.len());
    for chunk in body.as_bytes().chunks(40) {
        steady.write_all(chunk).unwrap();
        steady.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, text) = read_status(&mut steady);
    assert_eq!(status, 200, "{text}");

    // An HTTP/2 client that asks for the 1.7 MB docs bundle with its
    // flow-control window shut (SETTINGS_INITIAL_WINDOW_SIZE = 0, never a
    // WINDOW_UPDATE) takes nothing: the connection is dropped after one
    // send-rate window instead of holding its streams forever.
    let mut h2 = tls(&w, "127.0.0.1", "h2").unwrap();
    let mut frames = Vec::from(&HTTP2_PREFACE[..24]);
    // SETTINGS: INITIAL_WINDOW_SIZE (0x4) = 0.
    frames.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x4, 0, 0, 0, 0]);
    // HEADERS, stream 1, END_STREAM | END_HEADERS: GET https://localhost/docs/swagger-ui-bundle.js
    let path = b"/docs/swagger-ui-bundle.js";
    let mut block = vec![0x82, 0x87, 0x44, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    frames.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    frames.extend_from_slice(&block);
    h2.write_all(&frames).unwrap();
    h2.flush().unwrap();
    let after = closed_within(&mut h2, Duration::from_secs(15))
        .expect("a connection whose client takes nothing is closed");
    assert!(
        after >= Duration::from_secs(2),
        "closed after {after:?}: too early"
    );
    let (_, metrics) = w.admin_text("/metrics", &admin).await;
    let too_slow = metric(
        &metrics,
        "warden_connections_closed_total{listener=\"data\",reason=\"too_slow\"}",
    );
    assert!(too_slow >= 1.0, "{too_slow}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_flood_is_banned_and_tallied_not_recorded_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "",
        "[audit]\nrefusal_window = \"1s\"\ndurability = \"sync\"",
    );
    let w = Warden::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    let db = |w: &Warden| {
        ["warden.db", "warden.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(w.data_dir.join(f)).ok())
            .map(|m| m.len())
            .sum::<u64>()
    };
    // Warm the store's pages with a few records first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = db(&w);

    let mut codes = Vec::new();
    for _ in 0..300 {
        let r = w
            .client
            .post(w.url("/v1/models/iris:predict"))
            .json(&iris())
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    // A missing credential counts toward the ban like a wrong one.
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 403).count(), 290);
    // The legitimate client elsewhere is not affected.
    let legit = legit_client(&w);
    assert_eq!(legit_predict(&w, &legit, &key).await, StatusCode::OK);

    // The tallies are written once the window ends: a few records, not 300.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let grown = db(&w).saturating_sub(before);
    assert!(
        grown < 128 * 1024,
        "300 refusals grew the store by {grown} bytes"
    );

    // One record per address, outcome and window, with the count.
    let mut tallies = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, page) = w.admin_text("/admin/audit?limit=1000", &key).await;
        let page: Value = serde_json::from_str(&page).unwrap();
        tallies = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["record"]["event"] == "refusals")
            .map(|r| r["record"].clone())
            .collect::<Vec<Value>>();
        let counted: u64 = tallies.iter().map(|t| t["count"].as_u64().unwrap()).sum();
        if counted >= 300 {
            break;
        }
    }
    let count = |outcome: &str| -> u64 {
        tallies
            .iter()
            .filter(|t| t["outcome"] == outcome && t["client"] == "127.0.0.1")
            .map(|t| t["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (count("unauthenticated"), count("banned")),
        (10, 290),
        "{tallies:?}"
    );
    assert!(
        tallies.len() <= 6,
        "a handful of tallies, not 300 records: {tallies:?}"
    );
    // The tallies are inside the chain.
    let out = std::process::Command::new(super::BIN)
        .args([
            "audit",
            "verify",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(&w.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_closes_idle_http2_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Warden::start(dir.path(), &[]);
    let idle: Vec<Tls> = (0..50)
        .map(|_| {
            let mut s = tls(&w, "127.0.0.1", "h2").unwrap();
            s.write_all(HTTP2_PREFACE).unwrap();
            s.flush().unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(w.stop().code(), Some(0));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "shutdown took {took:?} with idle HTTP/2 clients"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_prunes_behind_an_anchor_and_the_rest_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "",
        "[audit]\nmax_records = 5\ncheckpoint_interval = \"300ms\"",
    );
    let w = Warden::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    for _ in 0..20 {
        let (status, _, _) = w
            .post("/v1/models/iris:predict", &key, iris().to_string())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let data = w.data_dir.clone();
    assert_eq!(w.terminate().code(), Some(0));
    let out = std::process::Command::new(super::BIN)
        .args([
            "audit",
            "verify",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("removed by the retention policy behind a verified anchor"),
        "{text}"
    );
    // At most 5 kept, plus what the shutdown wrote after the last prune.
    let kept: u64 = text
        .split(": ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(kept <= 8, "{text}");
}

/// One raw HTTP/1.1 request, the path sent exactly as given (a client
/// library would normalise `..` and percent-encoded dots away).
fn raw(w: &Warden, to: SocketAddr, method: &str, path: &str, key: &str) -> (u16, String) {
    let mut s = tls_to(w, to, "127.0.0.1", "http/1.1").unwrap();
    let body = r#"{"instances": [[5.1, 3.5, 1.4, 0.2]]}"#;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    status_and_text(&answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn path_and_name_attacks_find_nothing_outside_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let w = Warden::start(dir.path(), &[]);
    let key = w.printed_key.clone().unwrap();
    let admin = w.admin.unwrap();
    let names = [
        "..",
        "..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%5c..%5cwindows",
        "iris%00",
        "iris%00.toml",
        "%c0%ae%c0%ae%c0%af",
        "%e0%80%ae%e0%80%ae",
        "iris%2f..%2f..%2fmodels",
        ".%2firis",
        "%2fetc%2fpasswd",
        "~root",
        "iris%2fmodel.toml",
    ];
    let mut seen = Vec::new();
    for name in names {
        for (to, method, path) in [
            (w.addr, "GET", format!("/v2/models/{name}")),
            (w.addr, "GET", format!("/v2/models/{name}/ready")),
            (w.addr, "GET", format!("/v2/models/iris/versions/{name}")),
            (
                w.addr,
                "GET",
                format!("/v2/models/iris/versions/{name}/ready"),
            ),
            (w.addr, "POST", format!("/v2/models/{name}/infer")),
            (
                w.addr,
                "POST",
                format!("/v2/models/iris/versions/{name}/infer"),
            ),
            (w.addr, "POST", format!("/v1/models/{name}:predict")),
            (w.addr, "GET", format!("/docs/{name}")),
            (admin, "POST", format!("/admin/models/{name}/reload")),
            (admin, "POST", format!("/admin/keys/{name}/revoke")),
            (admin, "POST", format!("/admin/users/{name}/disable")),
            (admin, "POST", format!("/admin/clients/{name}/revoke")),
            (admin, "POST", format!("/admin/bans/{name}/lift")),
            (admin, "GET", format!("/admin/keys/{name}/quota")),
        ] {
            let (status, text) = raw(&w, to, method, &path, &key);
            seen.push((path, status, text));
        }
    }
    for (path, status, text) in &seen {
        // Refused as unknown or malformed, with the envelope; never served,
        // never an internal error, never a file's content.
        assert!([400, 404, 405].contains(status), "{path}: {text}");
        assert!(
            text.contains("\"code\""),
            "{path}: not the error envelope: {text}"
        );
        assert!(
            !text.contains("root:") && !text.contains("[input]"),
            "{path}: {text}"
        );
    }
    // The server carries on.
    let (status, _, _) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
}
