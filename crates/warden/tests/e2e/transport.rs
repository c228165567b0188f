//! Transport from the outside: certificates swapped on disk are served to
//! new handshakes without a restart while open connections keep theirs, and
//! a bad new pair leaves the old one in service. The client is Python's
//! ssl module (OpenSSL) with the `cryptography` package reading serials.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{BIN, Warden, repo};

fn tls_peer(args: &[&str]) -> String {
    super::python_peer("tls_peer.py", "cryptography", args)
}

fn generate(dir: &Path, days: &str) {
    let out = Command::new(BIN)
        .args(["cert", "generate", "--days", days, "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_restart_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let live = data.join("tls");
    let next = dir.path().join("next");
    generate(&live, "30");
    generate(&next, "90");
    // The client trusts both certificates (copies: the live files move).
    let (ca_old, ca_new) = (dir.path().join("old.pem"), dir.path().join("new.pem"));
    std::fs::copy(live.join("cert.pem"), &ca_old).unwrap();
    std::fs::copy(next.join("cert.pem"), &ca_new).unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nredirect_listen = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {{ file = {:?} }}\nreload_interval = \"200ms\"\n",
            live.join("cert.pem"),
            live.join("key.pem")
        ),
    )
    .unwrap();
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let port = w.addr.port().to_string();

    // The plaintext listener only redirects, to the same host and path.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = w.redirect.expect("the redirect listener");
    for (method, path) in [
        ("GET", "/v2/health/live"),
        ("POST", "/v1/models/iris:predict?x=1"),
    ] {
        let r = plain
            .request(
                method.parse().unwrap(),
                format!("http://127.0.0.1:{}{path}", redirect.port()),
            )
            .header("x-api-key", "wdn_sent_in_clear")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()["location"],
            format!("https://127.0.0.1:{port}{path}").as_str()
        );
        assert_eq!(r.text().await.unwrap(), "", "nothing served in clear");
    }
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    let swapped: Value = serde_json::from_str(&tls_peer(&[
        "swap",
        &port,
        &s(&live.join("cert.pem")),
        &s(&live.join("key.pem")),
        &s(&next.join("cert.pem")),
        &s(&next.join("key.pem")),
        &s(&ca_old),
        &s(&ca_new),
    ]))
    .unwrap();
    assert_ne!(swapped["old"], swapped["new"], "{swapped}");
    assert_eq!(swapped["kept_alive"], true, "{swapped}");
    assert!(swapped["seconds"].as_f64().unwrap() < 5.0, "{swapped}");

    // A broken certificate file: the new pair stays in service, on file
    // change and on SIGHUP alike, and the server keeps answering.
    std::fs::write(
        live.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    Command::new("kill")
        .args(["-HUP", &w.child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // (The peer's GET /v2/health/live succeeding shows the server answering.)
    let serving = tls_peer(&["serial", &port, &s(&ca_new)]);
    assert_eq!(serde_json::json!(serving), swapped["new"]);

    let logs = w.stop_and_collect_logs();
    assert!(
        logs.iter().any(|l| l.contains("TLS certificate reloaded")),
        "no reload logged"
    );
    assert!(
        logs.iter()
            .filter(|l| l.contains("\"alert\":\"certificate_reload_failed\""))
            .count()
            >= 2,
        "a bad file alerts on change and on SIGHUP"
    );
}

/// Runs sslyze's Mozilla "intermediate" check, certificate checks
/// included, against `localhost:port` with `ca` as its only trust store;
/// asserts it is compliant and returns the JSON report.
fn sslyze(port: u16, ca: &Path, dir: &Path) -> Value {
    let scanner = repo().join(".runtime/sslyze");
    assert!(
        scanner.join("sslyze").is_dir(),
        "sslyze is missing: run ./scripts/setup.sh"
    );
    let report = dir.join(format!("sslyze-{port}.json"));
    let out = Command::new("python3")
        .args([
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            "--certinfo_ca_file",
        ])
        .arg(ca)
        .arg(format!("--json_out={}", report.display()))
        .arg(format!("localhost:{port}"))
        .env("PYTHONPATH", &scanner)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("OK - Compliant"),
        "sslyze: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

/// The certificate Warden makes for itself with no configuration (docs/tls.md,
/// "Development certificate") passes the same check, certificate checks
/// included, with its development CA as the trust store: the leaf chains to
/// the CA, names localhost, lasts at most 90 days, and carries both key
/// identifiers. Python's own TLS stack (OpenSSL, strict X.509 checks)
/// accepts it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_certificate_passes_sslyze_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let w = Warden::start(&data, &[]);
    let ca = data.join("tls/ca.pem");
    let report = sslyze(w.addr.port(), &ca, dir.path());
    let deployments = &report["server_scan_results"][0]["scan_result"]["certificate_info"]["result"]
        ["certificate_deployments"][0];
    let supplied = deployments["path_validation_results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["trust_store"]["name"] == "Supplied CA file")
        .expect("a validation against the CA file");
    assert_eq!(supplied["was_validation_successful"], true, "{supplied}");
    assert_eq!(
        deployments["received_chain_contains_anchor_certificate"], false,
        "the CA is trusted, not sent"
    );
    // OpenSSL with strict X.509 checks, through Python's ssl module.
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import ssl,sys,urllib.request\n\
             c=ssl.create_default_context(cafile=sys.argv[1])\n\
             c.verify_flags|=ssl.VERIFY_X509_STRICT\n\
             print(urllib.request.urlopen(sys.argv[2],context=c).status)",
        )
        .arg(&ca)
        .arg(format!(
            "https://localhost:{}/v2/health/live",
            w.addr.port()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslyze_finds_the_mozilla_intermediate_configuration() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
    };
    // A deployment-like certificate: a CA, and a 90-day leaf it signed, with
    // the extensions RFC 5280 path validation expects.
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Warden test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.serial_number = Some(SerialNumber::from(1u64));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.serial_number = Some(SerialNumber::from(2u64));
    let now = time::OffsetDateTime::now_utc();
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(90);
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, format!("{}{}", cert.pem(), ca.pem())).unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // The test client trusts the CA (Warden::start reads data/tls/cert.pem).
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tls")).unwrap();
    std::fs::write(data.join("tls/cert.pem"), ca.pem()).unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        format!("[tls]\ncert = {chain:?}\nkey = {{ file = {key_file:?} }}\n"),
    )
    .unwrap();
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let (status, _) = w.get("/v2/health/live", None).await;
    assert_eq!(status, reqwest::StatusCode::OK);

    let report = sslyze(w.addr.port(), &ca_file, dir.path());

    let scan = &report["server_scan_results"][0]["scan_result"];
    let accepted = |suite: &str| -> Vec<String> {
        scan[suite]["result"]["accepted_cipher_suites"]
            .as_array()
            .unwrap_or_else(|| panic!("no {suite} in the report"))
            .iter()
            .map(|c| c["cipher_suite"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert_eq!(accepted(old), Vec::<String>::new(), "{old}");
    }
    let tls12 = accepted("tls_1_2_cipher_suites");
    assert!(!tls12.is_empty());
    for suite in &tls12 {
        assert!(
            suite.starts_with("TLS_ECDHE_")
                && (suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305"))
                && !suite.contains("CBC")
                && !suite.contains("RC4"),
            "TLS 1.2 suite {suite}"
        );
    }
    assert!(!accepted("tls_1_3_cipher_suites").is_empty());
    assert_eq!(
        scan["tls_compression"]["result"]["supports_compression"],
        false
    );
}

#[test]
fn a_secret_file_others_can_read_is_refused_unless_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("tls"), "30");
    let key = dir.path().join("tls/key.pem");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("warden.toml");
    let body = format!(
        "[tls]\ncert = {:?}\nkey = {{ file = {key:?} }}\n",
        dir.path().join("tls/cert.pem")
    );
    std::fs::write(&cfg, &body).unwrap();
    let check = || {
        Command::new(BIN)
            .args(["config", "check"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tls.key") && err.contains("readable"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "no key material in the error");

    std::fs::write(
        &cfg,
        format!("{body}[insecure]\nallow_readable_secret_files = true\n"),
    )
    .unwrap();
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: secret file") && err.contains("readable"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"));
}

/// A served certificate within 14 days of expiry raises a
/// `certificate_expiry` alert at start (per listener serving it), naming the
/// days left; one with a month left does not.
#[test]
fn a_certificate_near_expiry_is_warned_about() {
    use rcgen::{CertificateParams, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let alerts = |days: i64| -> Vec<Value> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // Where the test client looks for the certificate to trust.
        let d = dir.path().join(format!("d{days}/data/tls"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::set_permissions(d.join("key.pem"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let cfg = d.join("warden.toml");
        std::fs::write(
            &cfg,
            format!(
                "[tls]\ncert = {:?}\nkey = {{ file = {:?} }}\n",
                d.join("cert.pem"),
                d.join("key.pem")
            ),
        )
        .unwrap();
        let data = dir.path().join(format!("d{days}/data"));
        let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(500));
        w.stop_and_collect_logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["alert"] == "certificate_expiry")
            .collect()
    };
    let soon = alerts(5);
    assert_eq!(
        soon.len(),
        3,
        "data, management and gRPC listeners: {soon:?}"
    );
    for a in &soon {
        assert_eq!(a["level"], "WARN", "{a}");
        assert!(matches!(a["days_left"].as_i64(), Some(4..=5)), "{a}");
    }
    assert_eq!(alerts(30), Vec::<Value>::new());
}

/// `warden health` (the container's health check): exit 0 against its own
/// running server, trusting only the certificate its configuration serves;
/// exit 1 when nothing listens, and when another server (with another
/// certificate) answers on the address.
#[test]
fn warden_health_probes_its_own_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let wa = Warden::start(&a, &[]);
    let wb = Warden::start(&b, &[]);
    let probe = |data: &Path, addr: String| {
        Command::new(BIN)
            .args(["health", "--listen", &addr, "--data-dir"])
            .arg(data)
            .output()
            .unwrap()
    };
    let addr = |w: &Warden| format!("127.0.0.1:{}", w.addr.port());
    let ok = probe(&a, addr(&wa));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("live"));
    // B's server does not serve A's certificate: not trusted, not live.
    let other = probe(&a, addr(&wb));
    assert_eq!(other.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let port = wa.addr.port();
    drop(wa);
    let gone = probe(&a, format!("127.0.0.1:{port}"));
    assert_eq!(gone.status.code(), Some(1));
    drop(wb);
}
