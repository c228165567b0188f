//! Scale-out (docs/scaling.md): two Warden replicas sharing a real
//! Redis and a real PostgreSQL, behind nginx doing round-robin, both started
//! and configured by the test.

use std::sync::{Arc, Mutex};

use super::audit;
use super::gateway::free_port;
use super::limits::Redis;
use super::*;

#[path = "../../../warden-store/tests/support/pg.rs"]
mod pg;

/// nginx, round-robin over `backends` (HTTPS, each with its own
/// self-signed certificate), listening on plain HTTP on loopback.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, backends: &[u16]) -> Self {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("nginx is needed for this test: apt-get install nginx (.ci/run and scripts/setup.sh do)")
            });
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let servers: String = backends
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=0;\n"))
            .collect();
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream wardens {{
{servers}  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass https://wardens;
      proxy_ssl_verify off;
      proxy_next_upstream off;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One replica's configuration: the shared store, Redis and audit key,
/// and its own chain id.
fn replica_config(dir: &Path, name: &str, redis: u16) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1/32"]

# A minute: a revocation can only reach the other replica in time through
# the Redis announcement, not by the cache expiring.
[auth]
key_cache_ttl = "60s"

[store]
url = {{ file = "{store}" }}

[audit]
replica = "{name}"
key = {{ file = "{audit}" }}

[roles.app]
permissions = ["predict:iris", "predict:digits"]

[roles.loader]
permissions = ["predict:iris"]

[limits]
backend = "redis"
redis_url = "redis://127.0.0.1:{redis}"

[limits.rates]
default = {{ rate = "100000/hour", burst = 10000 }}
predict = {{ rate = "60/hour", burst = 20 }}

[limits.roles.loader]
predict = {{ rate = "1000000/hour", burst = 100000 }}

[[limits.quotas]]
role = "app"
model = "digits"
per_day = 7
"#,
            store = dir.join("store-url").display(),
            audit = dir.join("audit-key").display(),
        ),
    )
    .unwrap();
    path
}

async fn predict_via(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Option<String>) {
    let r = client
        .post(url)
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_nginx_share_keys_limits_quotas_and_keep_their_audit_chains() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(None);
    let postgres = pg::TestPostgres::start();
    private_file(&dir.path().join("store-url"), &postgres.url);
    private_file(&dir.path().join("audit-key"), &"ab".repeat(32));
    let cfg_a = replica_config(dir.path(), "a", redis.port);
    let cfg_b = replica_config(dir.path(), "b", redis.port);
    // One after the other: the first creates the schema and prints the
    // admin key; the second finds both.
    let a = Warden::start(
        &dir.path().join("data-a"),
        &["--config", cfg_a.to_str().unwrap()],
    );
    let admin = a
        .printed_key
        .clone()
        .expect("the first replica prints the admin key");
    let mut b = Warden::start(
        &dir.path().join("data-b"),
        &["--config", cfg_b.to_str().unwrap()],
    );
    assert!(
        b.printed_key.is_none(),
        "the admin key is shared, not made twice"
    );
    let lb = Nginx::start(&dir.path().join("nginx"), &[a.addr.port(), b.addr.port()]);
    let client = reqwest::Client::new();

    // A key made through replica A works through the balancer (so on both).
    let (status, created) = a
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "app", "role": "app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let app_key = created["key"].as_str().unwrap().to_owned();
    let app_id = created["id"].as_str().unwrap().to_owned();
    let one = iris();
    for _ in 0..4 {
        let (status, _) =
            predict_via(&client, &lb.url("/v1/models/iris:predict"), &app_key, &one).await;
        assert_eq!(status, StatusCode::OK);
    }

    // The rate limit (20 rows of burst, 60/hour) holds across both: 40
    // one-row requests through the balancer, half to each replica, and
    // only what is left of the burst passes in total.
    let mut passed = 0;
    for _ in 0..40 {
        let (status, _) =
            predict_via(&client, &lb.url("/v1/models/iris:predict"), &app_key, &one).await;
        match status {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert!(
        (16..=17).contains(&passed),
        "{passed} passed; 16 rows of burst were left"
    );

    // The quota (7 digits rows a day) holds across both.
    let (status, created) = a
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "q", "role": "app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let quota_key = created["key"].as_str().unwrap().to_owned();
    let quota_id = created["id"].as_str().unwrap().to_owned();
    let digit = json!({"instances": [vec![0.0; 64]]});
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            predict_via(
                &client,
                &lb.url("/v1/models/digits:predict"),
                &quota_key,
                &digit,
            )
            .await
            .0,
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        7,
        "{statuses:?}"
    );
    assert!(
        statuses[7..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );

    // A key revoked through replica A is refused by both within a second,
    // B included although it had the key cached a moment before.
    let (status, _, _) = b
        .post("/v1/models/iris:predict", &quota_key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "cached on B");
    let (status, _) = a
        .admin_call(
            "POST",
            &format!("/admin/keys/{app_id}/revoke"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let revoked = Instant::now();
    let (status, _) = a
        .admin_call(
            "POST",
            &format!("/admin/keys/{quota_id}/revoke"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let revoked_q = Instant::now();
    for (w, name) in [(&a, "a"), (&b, "b")] {
        loop {
            let (status, _, _) = w
                .post("/v1/models/iris:predict", &quota_key, iris().to_string())
                .await;
            if status == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(
                revoked_q.elapsed() < Duration::from_secs(1),
                "replica {name} still accepts a revoked key"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, _, _) = w
            .post("/v1/models/iris:predict", &app_key, iris().to_string())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "replica {name}");
    }
    // Both keys were seen refused by both replicas within a second of the
    // first revocation.
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
    let propagation = revoked_q.elapsed();

    // PostgreSQL goes down for a while. Keys already verified keep working
    // (the key cache), and their audit records wait in the writer's queue;
    // a key never seen before cannot be checked and gets `internal`. Once
    // PostgreSQL is back, the store reconnects by itself and the queued
    // records are committed (checked with the export below).
    let (status, created) = a
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "outage", "role": "loader"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let outage_key = created["key"].as_str().unwrap().to_owned();
    let (status, created) = a
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "unseen", "role": "loader"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let unseen_key = created["key"].as_str().unwrap().to_owned();
    for w in [&a, &b] {
        assert_eq!(
            w.post("/v1/models/iris:predict", &outage_key, iris().to_string())
                .await
                .0,
            StatusCode::OK
        );
    }
    let mut postgres = postgres;
    postgres.stop();
    let mut during_outage = Vec::new();
    for w in [&a, &b] {
        for _ in 0..5 {
            let (status, headers, body) = w
                .post("/v1/models/iris:predict", &outage_key, iris().to_string())
                .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "a cached key works while PostgreSQL is down: {body}"
            );
            during_outage.push(headers["x-request-id"].to_str().unwrap().to_owned());
        }
        let (status, _, body) = w
            .post("/v1/models/iris:predict", &unseen_key, iris().to_string())
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["code"], "internal");
        assert!(
            !body.to_string().contains("postgres")
                && !body.to_string().contains(&postgres.port.to_string())
        );
    }
    postgres.start_again();
    let back = Instant::now();
    for w in [&a, &b] {
        while w
            .post("/v1/models/iris:predict", &unseen_key, iris().to_string())
            .await
            .0
            != StatusCode::OK
        {
            assert!(
                back.elapsed() < Duration::from_secs(15),
                "the store did not reconnect"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Stopping replica B while it is serving loses no acknowledged
    // request's audit record: SIGTERM drains in-flight requests and
    // flushes the batched writer.
    let (status, created) = a
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "load", "role": "loader"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let load_key = created["key"].as_str().unwrap().to_owned();
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let url_b = b.url("/v1/models/iris:predict");
    let tls_client = b.client.clone();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url, key, acked) = (
            tls_client.clone(),
            url_b.clone(),
            load_key.clone(),
            acknowledged.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match client
                    .post(&url)
                    .header("x-api-key", &key)
                    .json(&iris())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => {
                        if let Some(id) = r
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                        {
                            acked.lock().unwrap().push(id.to_owned());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    // Stop B once it has acknowledged a fair number, with requests in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 40 {
        assert!(
            Instant::now() < deadline,
            "replica B acknowledged too few requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = b.stop();
        (s, b)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0));
    for t in tasks {
        let _ = t.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 20, "{} requests", acknowledged.len());

    // Each replica's chain verifies, and B's holds every acknowledged request.
    let data_a = dir.path().join("data-a");
    let (code, text) = audit::verify(&cfg_a, &data_a, &[]);
    assert_eq!(code, Some(0), "{text}");
    for chain in ["a", "b"] {
        assert!(
            text.contains(&format!("audit chain {chain}: ")) && text.contains("records verified"),
            "{text}"
        );
    }
    audit::assert_all_recorded(
        &acknowledged,
        &audit::export_with(&cfg_a, &data_a, &["--replica", "b"]),
    );
    audit::assert_all_recorded(&during_outage, &audit::export_with(&cfg_a, &data_a, &[]));
    // Both replicas served the balanced traffic: each chain has predictions.
    for replica in ["a", "b"] {
        let predictions = audit::export_with(&cfg_a, &data_a, &["--replica", replica])
            .iter()
            .filter(|l| l["record"]["model"] == "iris")
            .count();
        assert!(
            predictions >= 10,
            "replica {replica}: {predictions} iris records"
        );
    }
    eprintln!("revocation reached both replicas in {propagation:?}");
    drop(lb);
}
