//! Abuse control from the outside: rate limits in rows, quotas, bans (and
//! spoofed forwarding headers that must not dodge them), the token
//! endpoint's limit, and two replicas sharing a real redis-server.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::Warden;

fn rows(n: usize) -> String {
    json!({"instances": vec![[5.1, 3.5, 1.4, 0.2]; n]}).to_string()
}

fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("warden.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[roles.app]
permissions = ["predict:iris"]

[roles.tiny]
permissions = ["predict:iris"]

[limits.roles.tiny]
default = {{ rate = "3/hour", burst = 3 }}

[limits.rates]
default = {{ rate = "1000/hour", burst = 1000 }}
predict = {{ rate = "30/hour", burst = 30 }}

[[limits.quotas]]
role = "app"
model = "iris"
per_day = 5

{extra}
"#
        ),
    )
    .unwrap();
    path
}

impl Warden {
    async fn predict_with(
        &self,
        key: &str,
        body: String,
        forwarded: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self
            .client
            .post(self.url("/v1/models/iris:predict"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body);
        if let Some(f) = forwarded {
            r = r.header("x-forwarded-for", f);
        }
        r.send().await.unwrap()
    }

    pub(super) async fn admin_json(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!(
            "{}://localhost:{}{path}",
            self.scheme,
            self.admin.unwrap().port()
        );
        let mut r = self
            .client
            .request(method.parse().unwrap(), url)
            .header("x-api-key", key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_quotas_bans_and_spoofed_forwarding_headers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let w = Warden::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let admin = w.printed_key.clone().unwrap();

    // Rows, not requests: 30 rows pass with the RateLimit headers, one more
    // row does not, and a 31-row batch never passes at once.
    let r = w.predict_with(&admin, rows(31), None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = w.predict_with(&admin, rows(20), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "ratelimit-policy"), "\"predict\";q=30;w=3600");
    assert!(
        header(&r, "ratelimit").starts_with("\"predict\";r=10;t="),
        "{}",
        header(&r, "ratelimit")
    );
    let r = w.predict_with(&admin, rows(10), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = w.predict_with(&admin, rows(1), None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!(
        (1..=120).contains(&retry),
        "one row back after ~2 minutes: {retry}"
    );
    assert!(header(&r, "ratelimit").starts_with("\"predict\";r=0;"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Metadata routes carry the default policy's headers.
    let r = w
        .client
        .get(w.url("/v2/models/iris"))
        .header("x-api-key", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=1000;w=3600");

    // A quota of 5 rows a day for the app role, on iris.
    let (status, body) = w
        .admin_json(
            "POST",
            "/admin/keys",
            &admin,
            Some(json!({"name": "app", "role": "app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let app = body["key"].as_str().unwrap().to_owned();
    let app_id = body["id"].as_str().unwrap().to_owned();
    let r = w.predict_with(&app, rows(3), None).await;
    assert_eq!(
        (r.status(), header(&r, "x-quota-remaining")),
        (StatusCode::OK, "2")
    );
    let r = w.predict_with(&app, rows(3), None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=86_400).contains(&retry), "until midnight UTC: {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "quota_exceeded");
    let (status, q) = w
        .admin_json("GET", &format!("/admin/keys/{app_id}/quota"), &admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(q["quotas"][0]["used"], 3);
    assert_eq!(q["quotas"][0]["remaining"], 2);

    default_limit_counts_every_answer(&w, &admin).await;

    // A burst of 100 wrong keys, each claiming another address in
    // X-Forwarded-For: the peer is not a trusted proxy, so they are one
    // client, banned after ten failures; the ban holds for a good key too.
    let forged = format!("wdn_aaaaaaaaaaaa_{}", "A".repeat(43));
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..100 {
        let r = w
            .predict_with(&forged, rows(1), Some(&format!("203.0.113.{i}")))
            .await;
        *codes.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(codes.get(&401), Some(&10), "{codes:?}");
    assert_eq!(codes.get(&403), Some(&90), "{codes:?}");
    let r = w.predict_with(&admin, rows(1), Some("198.51.100.7")).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "banned before authentication"
    );
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "banned");

    // The management plane keeps its own bans: operators are not locked out.
    let (status, bans) = w.admin_json("GET", "/admin/bans", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bans["bans"][0]["subject"], "addr:127.0.0.1", "{bans}");
    let (status, _) = w
        .admin_json("POST", "/admin/bans/addr:127.0.0.1/lift", &admin, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = w
        .client
        .get(w.url("/v2"))
        .header("x-api-key", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "lifted");

    // The token endpoint: requests with forged addresses are one client.
    let mut ok_or_refused = 0;
    let mut limited = 0;
    for i in 0..20 {
        let r = w
            .client
            .post(w.url("/oauth/token"))
            .header("x-forwarded-for", format!("192.0.2.{i}"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &format!("c{i}")),
                ("client_secret", "x"),
            ])
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            _ => ok_or_refused += 1,
        }
    }
    assert_eq!(
        (ok_or_refused, limited),
        (5, 15),
        "the token policy: 5 per address"
    );

    let logs = w.stop_and_collect_logs();
    assert!(logs.iter().any(
        |l| l.contains("banned after repeated authentication failures")
            && l.contains("\"alert\":\"auth_failure_spike\"")
    ));
    assert!(logs.iter().any(|l| l.contains("ban lifted")));
}

/// The `default` policy counts every request once, whatever its answer, and
/// a client over it gets `rate_limited` whatever it sends: an inference
/// call's charge is taken with its rows (one round trip to shared state),
/// or after the call when it ended earlier (docs/pipeline.md).
async fn default_limit_counts_every_answer(w: &Warden, admin: &str) {
    let (status, body) = w
        .admin_json(
            "POST",
            "/admin/keys",
            admin,
            Some(json!({"name": "tiny", "role": "tiny"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tiny = body["key"].as_str().unwrap().to_owned();
    let unknown_model = || async {
        w.client
            .post(w.url("/v1/models/nope:predict"))
            .header("x-api-key", &tiny)
            .body(rows(1))
            .send()
            .await
            .unwrap()
    };
    // Three requests: refused by validation, served, an unknown model.
    let r = w
        .predict_with(&tiny, r#"{"instances": "x"}"#.into(), None)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = w.predict_with(&tiny, rows(1), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "ratelimit").starts_with("\"predict\";"));
    assert_eq!(unknown_model().await.status(), StatusCode::NOT_FOUND);
    // The limit of 3 is spent: a good call, a bad body and an unknown
    // model all get the `default` policy's 429.
    for r in [
        w.predict_with(&tiny, rows(1), None).await,
        w.predict_with(&tiny, r#"{"instances": "x"}"#.into(), None)
            .await,
        unknown_model().await,
    ] {
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=3;w=3600");
        assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "rate_limited");
    }
}

/// A redis-server on a free port, started and stopped by the test.
pub(super) struct Redis {
    child: Child,
    pub(super) port: u16,
}

impl Redis {
    pub(super) fn start(port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server is needed for this test ({e}): apt-get install redis-server (.ci/run and scripts/setup.sh do)")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `GET /v2` on `w` every 20 ms until it answers `wanted`, for up to
/// 5 s; until then every answer must be `meanwhile`. A ban or lift made
/// through another replica arrives on this one's own subscription: within
/// milliseconds, but asynchronously (docs/limits.md).
async fn await_v2_status(
    w: &Warden,
    key: &str,
    wanted: StatusCode,
    meanwhile: StatusCode,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = w
            .client
            .get(w.url("/v2"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        if r.status() == wanted {
            return;
        }
        assert_eq!(r.status(), meanwhile);
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_limits_and_bans_through_redis() {
    let mut redis = Redis::start(None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\nredis_prefix = \"t{}:\"\n",
            redis.port,
            std::process::id()
        ),
    );
    let data = dir.path().join("data");
    let a = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let b = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let admin = a.printed_key.clone().unwrap();
    let (_, body) = a
        .admin_json(
            "POST",
            "/admin/keys",
            &admin,
            Some(json!({"name": "app", "role": "app"})),
        )
        .await;
    let app = body["key"].as_str().unwrap().to_owned();

    // One limit of 30 rows for both replicas: 40 one-row requests, split.
    let mut accepted = 0;
    for i in 0..40 {
        let w = if i % 2 == 0 { &a } else { &b };
        if w.predict_with(&admin, rows(1), None).await.status() == StatusCode::OK {
            accepted += 1;
        }
    }
    assert!(
        (29..=31).contains(&accepted),
        "accepted {accepted} of a shared limit of 30"
    );

    // A quota spent on one replica is spent on the other.
    assert_eq!(
        a.predict_with(&app, rows(5), None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        b.predict_with(&app, rows(1), None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // The same order with shared state (one round trip per inference).
    default_limit_counts_every_answer(&b, &admin).await;

    // A ban made through one replica is honoured by the other, and lifted through it.
    let forged = format!("wdn_aaaaaaaaaaaa_{}", "A".repeat(43));
    for _ in 0..10 {
        assert_eq!(
            a.predict_with(&forged, rows(1), None).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The other replica learns of the ban from its announcement, which
    // arrives on its own subscription: within milliseconds, but not
    // necessarily before this client's next request (docs/limits.md).
    await_v2_status(
        &b,
        &admin,
        StatusCode::FORBIDDEN,
        StatusCode::OK,
        "not banned on the other replica",
    )
    .await;
    let (status, _) = b
        .admin_json("POST", "/admin/bans/addr:127.0.0.1/lift", &admin, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // The lift reaches the first replica the same way.
    await_v2_status(
        &a,
        &admin,
        StatusCode::OK,
        StatusCode::FORBIDDEN,
        "not lifted everywhere",
    )
    .await;

    // Redis goes away: rate limits fall back to each replica's own limiter
    // (requests are served), quotas refuse (fail closed) with 503.
    let port = redis.port;
    redis.stop();
    let r = a
        .client
        .get(a.url("/v2"))
        .header("x-api-key", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "local limiter while Redis is down"
    );
    let r = a.predict_with(&app, rows(1), None).await;
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "quotas fail closed"
    );
    assert!(r.headers().contains_key("retry-after"));

    // Redis comes back (empty): the replicas reconnect without a restart.
    let _redis = Redis::start(Some(port));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if a.predict_with(&app, rows(1), None).await.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection to Redis");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs = a.stop_and_collect_logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("Redis unavailable: falling back"))
    );
    drop(b);
}
