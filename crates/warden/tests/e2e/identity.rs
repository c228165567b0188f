//! Identity from the outside: JWT issuers and the attacks on them, the OAuth2
//! token endpoint (with PyJWT as an independent peer), RBAC, the management
//! API and key lifecycle, and mTLS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{BIN, Warden, iris, private_file, repo};

const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const AUD: &str = "warden-test";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs the PyJWT peer (installed by scripts/setup.sh into .runtime/py).
fn pyjwt(args: &[&str]) -> String {
    super::python_peer("jwt_peer.py", "jwt", args)
}

/// A copy of the iris model whose card gives the role `app` labels only.
fn models_with_role_policy(dir: &Path) -> PathBuf {
    let models = dir.join("models");
    let src = repo().join("models/iris");
    std::fs::create_dir_all(models.join("iris/1")).unwrap();
    std::fs::copy(src.join("1/model.onnx"), models.join("iris/1/model.onnx")).unwrap();
    std::fs::copy(
        src.join("ood_stats.json"),
        models.join("iris/ood_stats.json"),
    )
    .unwrap();
    let card = std::fs::read_to_string(src.join("model.toml")).unwrap();
    std::fs::write(
        models.join("iris/model.toml"),
        format!("{card}\n[policy.roles.app]\noutput = \"label\"\n"),
    )
    .unwrap();
    models
}

/// Config with two roles, the token endpoint, an HS256 issuer and a JWKS issuer.
fn identity_config(dir: &Path, limit_per_minute: u32) -> PathBuf {
    let pk = dir.join("pk");
    std::fs::create_dir_all(&pk).unwrap();
    pyjwt(&["keys", pk.to_str().unwrap()]);
    private_file(&dir.join("hs.secret"), HS_SECRET);
    let config = dir.join("warden.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[roles.analyst]
description = "probabilities on iris"
permissions = ["predict:iris", "models:read"]
[roles.app]
permissions = ["predict:iris"]
[roles.keymaster]
permissions = ["admin:keys", "predict:iris"]

[auth]
key_rotation_grace = "1h"
[auth.tokens]
lifetime = "5m"

[limits.rates]
token = {{ rate = "{limit_per_minute}/minute", burst = {limit_per_minute} }}
[limits.bans]
failures = {failures}

[[auth.jwt]]
name = "hs"
issuer = "https://hs.example"
audience = ["{AUD}"]
algorithms = ["HS256"]
hs256_secret = {{ file = "{hs}" }}
leeway = "5s"

[[auth.jwt]]
name = "py"
issuer = "https://py.example"
audience = ["{AUD}"]
algorithms = ["RS256", "ES256"]
jwks_file = "{jwks}"
scope_map = {{ "ml.analyst" = ["role:analyst"] }}
"#,
            hs = dir.join("hs.secret").display(),
            // The attack suite fails authentication on purpose many times
            // from one address; the brute-force test relies on the limit.
            failures = 1000,
            jwks = pk.join("jwks.json").display(),
        ),
    )
    .unwrap();
    config
}

fn start(dir: &Path, config: &Path) -> Warden {
    let models = models_with_role_policy(dir);
    Warden::start(
        &dir.join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--models",
            models.to_str().unwrap(),
        ],
    )
}

fn hs_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims(iss: &str, scope: &str) -> Value {
    let t = now();
    json!({"iss": iss, "aud": AUD, "sub": "svc-1", "iat": t, "nbf": t, "exp": t + 300, "scope": scope})
}

/// A JWT from its parts, signed with HS256 under `secret`.
fn raw_token(header: &Value, payload: &Value, secret: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        signing_input.as_bytes(),
    );
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

impl Warden {
    pub(super) fn admin_url(&self, path: &str) -> String {
        format!(
            "{}://localhost:{}{path}",
            self.scheme,
            self.admin.unwrap().port()
        )
    }

    /// POST /v1/models/{model}:predict with a bearer credential.
    async fn predict_bearer(&self, model: &str, bearer: &str) -> (StatusCode, Value, bool) {
        let r = self
            .client
            .post(self.url(&format!("/v1/models/{model}:predict")))
            .bearer_auth(bearer)
            .json(&iris())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let challenge = r.headers().contains_key("www-authenticate");
        (status, r.json().await.unwrap_or(Value::Null), challenge)
    }

    async fn token(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut r = self.client.post(self.url("/oauth/token")).form(form);
        if let Some((id, secret)) = basic {
            r = r.basic_auth(id, Some(secret));
        }
        let r = r.send().await.unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    pub(super) async fn admin_call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .client
            .request(method.parse().unwrap(), self.admin_url(path));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    fn cli_config(
        &self,
        config: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::process::Output {
        let mut child = Command::new(BIN)
            .env("WARDEN_GRPC_LISTEN", "127.0.0.1:0")
            .args(args)
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }
}

fn assert_unauthenticated(what: &str, (status, body, challenge): (StatusCode, Value, bool)) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["code"], "unauthenticated", "{what}: {body}");
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["code", "error", "request_id"],
        "{what}: flat envelope only"
    );
    assert!(challenge, "{what}: WWW-Authenticate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_issuers_accept_good_tokens_and_refuse_every_attack() {
    let dir = tempfile::tempdir().unwrap();
    let config = identity_config(dir.path(), 100);
    let w = start(dir.path(), &config);
    let pk = dir.path().join("pk");
    let pk = pk.to_str().unwrap();

    // Good tokens: HS256 with Warden permissions in `scope`.
    let good = hs_token(&claims("https://hs.example", "predict:iris"));
    let (status, body, _) = w.predict_bearer("iris", &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = w.predict_bearer("digits", &good).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no predict on digits → 404");

    // PyJWT-minted RS256 and ES256 tokens, verified against the JWKS file;
    // the `ml.analyst` scope maps to the analyst role.
    for (alg, kid) in [("RS256", "rsa-1"), ("ES256", "ec-1")] {
        let c = claims("https://py.example", "ml.analyst").to_string();
        let token = pyjwt(&["mint", pk, alg, kid, &c]);
        let (status, body, _) = w.predict_bearer("iris", &token).await;
        assert_eq!(status, StatusCode::OK, "{alg}: {body}");
        assert!(
            body["predictions"][0]["probabilities"].is_object(),
            "{alg}: analyst gets probabilities: {body}"
        );
    }

    // Attacks, each refused with 401 and the flat envelope.
    let t = now();
    let base = claims("https://hs.example", "predict:iris");
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let good_parts: Vec<&str> = good.split('.').collect();
    let mut tampered_payload = base.clone();
    tampered_payload["scope"] = json!("predict:* admin:*");
    let rsa_public = std::fs::read(dir.path().join("pk/rsa-public.pem")).unwrap();
    let warden_jwks: Value = w
        .client
        .get(w.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let warden_x = URL_SAFE_NO_PAD
        .decode(warden_jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let warden_iss: Value = w
        .client
        .get(w.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let warden_iss = warden_iss["issuer"].as_str().unwrap().to_owned();
    let hs = HS_SECRET.as_bytes();
    let attacks: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
                URL_SAFE_NO_PAD.encode(base.to_string())
            ),
        ),
        (
            "HS256 signed with the issuer's RSA public key (algorithm confusion)",
            raw_token(
                &json!({"alg": "HS256", "kid": "rsa-1"}),
                &claims("https://py.example", "predict:*"),
                &rsa_public,
            ),
        ),
        (
            "HS256 signed with Warden's Ed25519 public key (algorithm confusion)",
            raw_token(
                &json!({"alg": "HS256", "kid": warden_jwks["keys"][0]["kid"]}),
                &json!({"iss": warden_iss, "aud": "warden", "sub": "client:x", "exp": t + 300, "scope": "admin:*"}),
                &warden_x,
            ),
        ),
        ("expired", hs_token(&with("exp", json!(t - 60)))),
        ("not yet valid", hs_token(&with("nbf", json!(t + 600)))),
        (
            "issued in the future",
            hs_token(&with("iat", json!(t + 600))),
        ),
        ("no exp", {
            let mut c = base.clone();
            c.as_object_mut().unwrap().remove("exp");
            hs_token(&c)
        }),
        (
            "unknown iss",
            hs_token(&with("iss", json!("https://evil.example"))),
        ),
        ("wrong aud", hs_token(&with("aud", json!("someone-else")))),
        (
            "unknown kid",
            pyjwt(&[
                "mint",
                pk,
                "RS256",
                "nope",
                &claims("https://py.example", "predict:*").to_string(),
            ]),
        ),
        (
            "kid with a path",
            pyjwt(&[
                "mint",
                pk,
                "RS256",
                "../../../etc/passwd",
                &claims("https://py.example", "predict:*").to_string(),
            ]),
        ),
        (
            "kid with SQL",
            pyjwt(&[
                "mint",
                pk,
                "ES256",
                "' OR '1'='1'; --",
                &claims("https://py.example", "predict:*").to_string(),
            ]),
        ),
        (
            "tampered payload, original signature",
            format!(
                "{}.{}.{}",
                good_parts[0],
                URL_SAFE_NO_PAD.encode(tampered_payload.to_string()),
                good_parts[2]
            ),
        ),
        (
            "truncated signature",
            format!(
                "{}.{}.{}",
                good_parts[0],
                good_parts[1],
                &good_parts[2][..20]
            ),
        ),
        (
            "jku and x5u pointing elsewhere, signed with the attacker's key",
            raw_token(
                &json!({"alg": "HS256", "jku": "https://evil.example/jwks.json", "x5u": "https://evil.example/cert.pem"}),
                &base,
                b"the-attackers-own-secret-of-32-bytes!!",
            ),
        ),
        (
            "a 100 KiB token",
            format!(
                "{}.{}.{}",
                good_parts[0],
                "A".repeat(100 * 1024),
                good_parts[2]
            ),
        ),
        ("not base64", "a.b.c".into()),
    ];
    assert!(raw_token(&json!({"alg": "HS256"}), &base, hs).len() > 10);
    for (what, token) in &attacks {
        assert_unauthenticated(what, w.predict_bearer("iris", token).await);
    }
    // The 100 KiB token is refused by the header limit or the credential
    // cap, never by a crash: the server still answers.
    let (status, _, _) = w.predict_bearer("iris", &good).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "server still healthy after the attacks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_token_endpoint_issues_tokens_pyjwt_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let config = identity_config(dir.path(), 1000);
    let w = start(dir.path(), &config);
    let admin_key = w.printed_key.clone().unwrap();

    // CLI: roles, a user (password on stdin), a client (secret printed once).
    let out = w.cli_config(&config, &["roles", "list"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("analyst")
            && text.contains("predict:iris models:read"),
        "{text}"
    );
    let out = w.cli_config(
        &config,
        &["users", "add", "alice", "--role", "app"],
        Some("correct horse battery\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.cli_config(
        &config,
        &["clients", "add", "billing", "--role", "analyst"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let (client_id, secret) = (field("client_id"), field("client_secret"));

    // client_credentials by HTTP Basic, and by the form.
    let (status, headers, body) = w
        .token(
            &[("grant_type", "client_credentials")],
            Some((&client_id, &secret)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "predict:iris models:read");
    assert_eq!(headers["cache-control"], "no-store");
    let client_token = body["access_token"].as_str().unwrap().to_owned();
    let (status, body) = {
        let (s, _, b) = w
            .token(
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &client_id),
                    ("client_secret", &secret),
                ],
                None,
            )
            .await;
        (s, b)
    };
    assert_eq!(status, StatusCode::OK, "{body}");

    // The token works, with the analyst's output policy and model scope.
    let (status, body, _) = w.predict_bearer("iris", &client_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["predictions"][0]["probabilities"].is_object(),
        "{body}"
    );
    let (status, _, _) = w.predict_bearer("digits", &client_token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The password grant; the app role sees labels only.
    let (status, _, body) = w
        .token(
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "correct horse battery"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user_token = body["access_token"].as_str().unwrap().to_owned();
    let (status, body, _) = w.predict_bearer("iris", &user_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["predictions"][0],
        json!({"label": "setosa"}),
        "app: labels only"
    );

    // RFC 6749 §5.2 errors.
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Option<(&'a str, &'a str)>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("grant_type", "client_credentials")],
            Some((&client_id, "wrong")),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials")],
            Some(("nobody", "wrong")),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials"), ("client_secret", "x")],
            Some((&client_id, &secret)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "admin:keys"),
            ],
            Some((&client_id, &secret)),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "wrong password!!"),
            ],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("username", "mallory"),
                ("password", "wrong password!!"),
            ],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("grant_type", "authorization_code"), ("code", "x")],
            None,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            vec![("username", "alice")],
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (form, basic, expected_status, code) in cases {
        let (status, headers, body) = w.token(&form, basic).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (expected_status, Some(code)),
            "{form:?}: {body}"
        );
        assert!(
            body["error_description"].is_string() && body["request_id"].is_string(),
            "{body}"
        );
        if code == "invalid_client" {
            assert!(headers.contains_key("www-authenticate"));
        }
    }
    // A JSON body is not a token request.
    let r = w
        .client
        .post(w.url("/oauth/token"))
        .json(&json!({"grant_type": "password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Failed logins cost the same whether or not the user exists.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..4 {
        for (user, times) in [("alice", &mut known), ("nobody-here", &mut unknown)] {
            let started = Instant::now();
            let (status, _, _) = w
                .token(
                    &[
                        ("grant_type", "password"),
                        ("username", user),
                        ("password", "not the password"),
                    ],
                    None,
                )
                .await;
            times.push(started.elapsed().as_secs_f64());
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (k, u) = (median(&mut known), median(&mut unknown));
    assert!(
        k / u > 0.6 && k / u < 1.66,
        "known {k:.3}s vs unknown {u:.3}s"
    );

    // The JWKS and RFC 8414 metadata; PyJWT verifies Warden's token with them.
    let meta: Value = w
        .client
        .get(w.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = meta["issuer"].as_str().unwrap().to_owned();
    assert_eq!(meta["token_endpoint"], format!("{issuer}/oauth/token"));
    let jwks_text = w
        .client
        .get(w.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let jwks_path = dir.path().join("warden-jwks.json");
    std::fs::write(&jwks_path, &jwks_text).unwrap();
    let verified: Value = serde_json::from_str(&pyjwt(&[
        "verify",
        jwks_path.to_str().unwrap(),
        &client_token,
        &issuer,
        "warden",
    ]))
    .unwrap();
    assert_eq!(verified["sub"], format!("client:{client_id}"));
    assert_eq!(verified["roles"], json!(["analyst"]));

    // Signing-key rotation: new tokens get a new kid, old tokens still work,
    // both keys are published.
    let old_kid = jsonwebtoken::decode_header(&client_token)
        .unwrap()
        .kid
        .unwrap();
    let (status, body) = w
        .admin_call("POST", "/admin/signing-keys/rotate", Some(&admin_key), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_kid = body["current"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    let (_, _, body) = w
        .token(
            &[("grant_type", "client_credentials")],
            Some((&client_id, &secret)),
        )
        .await;
    let new_token = body["access_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(new_token).unwrap().kid.unwrap(),
        new_kid
    );
    for token in [&client_token, new_token] {
        assert_eq!(w.predict_bearer("iris", token).await.0, StatusCode::OK);
    }
    let jwks: Value = serde_json::from_str(
        &w.client
            .get(w.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );

    // A revoked client gets no more tokens.
    let out = w.cli_config(&config, &["clients", "revoke", &client_id], None);
    assert!(out.status.success());
    let (status, _, body) = w
        .token(
            &[("grant_type", "client_credentials")],
            Some((&client_id, &secret)),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_brute_force_is_limited_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let config = identity_config(dir.path(), 5);
    let w = start(dir.path(), &config);
    let out = w.cli_config(
        &config,
        &["users", "add", "victim", "--role", "app"],
        Some("the real password\n"),
    );
    assert!(out.status.success());
    for i in 0..5 {
        let (status, headers, body) = w
            .token(
                &[
                    ("grant_type", "password"),
                    ("username", "victim"),
                    ("password", &format!("guess {i}")),
                ],
                None,
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        // The IETF RateLimit headers, like every limited route (docs/api.md):
        // the address's limit, which counts down from 4 (the account's is
        // shown only once it refuses).
        assert_eq!(headers["ratelimit-policy"], "\"token\";q=5;w=60");
        let left = headers["ratelimit"].to_str().unwrap();
        assert!(
            left.starts_with(&format!("\"token\";r={};t=", 4 - i)),
            "{i}: {left}"
        );
    }
    // The sixth attempt from this address is refused before any password
    // work, even with the right password or another username.
    for (user, password) in [("victim", "the real password"), ("other", "x")] {
        let (status, headers, body) = w
            .token(
                &[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", password),
                ],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"], "rate_limited");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let left = headers["ratelimit"].to_str().unwrap();
        assert!(left.starts_with("\"token\";r=0;t="), "{left}");
    }
    let logs = w.stop_and_collect_logs();
    let failed = logs
        .iter()
        .filter(|l| l.contains("login failed") && l.contains("victim"))
        .count();
    assert_eq!(failed, 5, "each failed login is logged with the username");
    assert!(logs.iter().any(|l| l.contains("address over its limit")));
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("guess 1") || l.contains("the real password")),
        "no password in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_runs_the_key_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let config = identity_config(dir.path(), 100);
    let w = start(dir.path(), &config);
    let admin = w.printed_key.clone().unwrap();

    // The management API is on its own listener, and needs admin permissions.
    assert_eq!(
        w.get("/admin/keys", Some(&admin)).await.0,
        StatusCode::NOT_FOUND,
        "not on the data plane"
    );
    assert_eq!(
        w.admin_call("GET", "/admin/keys", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = w.admin_call("GET", "/admin/keys", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.to_string().contains("hash"), "no hashes: {body}");

    let (status, body) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "app", "role": "predict", "models": ["iris"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body) = w.admin_call("GET", "/admin/keys", Some(&key), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, body) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        w.post("/v1/models/iris:predict", &key, iris().to_string())
            .await
            .0,
        StatusCode::OK
    );

    // Rotate with a 2 s grace: both keys work, then only the new one.
    let (status, body) = w
        .admin_call(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(&admin),
            Some(json!({"grace": "2s"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_key = body["key"].as_str().unwrap().to_owned();
    let new_id = body["id"].as_str().unwrap().to_owned();
    for k in [&key, &new_key] {
        assert_eq!(
            w.post("/v1/models/iris:predict", k, iris().to_string())
                .await
                .0,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        w.post("/v1/models/iris:predict", &key, iris().to_string())
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "old key after its grace period"
    );
    assert_eq!(
        w.post("/v1/models/iris:predict", &new_key, iris().to_string())
            .await
            .0,
        StatusCode::OK
    );

    // Last use is recorded (flushed every few seconds).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = w.admin_call("GET", "/admin/keys", Some(&admin), None).await;
        let entry = body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == new_id.as_str())
            .unwrap()
            .clone();
        if entry["last_used_at"].is_i64() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never set: {entry}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Revocation through the API is effective at once.
    let (status, _) = w
        .admin_call(
            "POST",
            &format!("/admin/keys/{new_id}/revoke"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        w.post("/v1/models/iris:predict", &new_key, iris().to_string())
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // `admin:keys` is not a way to become admin: a caller hands out (or takes
    // over) only credentials holding no more than it holds itself.
    let (status, body) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "km", "role": "keymaster"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let keymaster = body["key"].as_str().unwrap().to_owned();
    let admin_id = admin.split('_').nth(1).unwrap();
    for (method, path, body) in [
        (
            "POST",
            "/admin/keys".to_string(),
            Some(json!({"name": "x", "role": "admin"})),
        ),
        (
            "POST",
            "/admin/keys".to_string(),
            Some(json!({"name": "x", "role": "predict"})),
        ),
        ("POST", format!("/admin/keys/{admin_id}/rotate"), None),
        ("POST", format!("/admin/keys/{admin_id}/revoke"), None),
    ] {
        let (status, reply) = w.admin_call(method, &path, Some(&keymaster), body).await;
        assert_eq!(
            (status, reply["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{path}"
        );
    }
    let (status, body) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&keymaster),
            Some(json!({"name": "y", "role": "app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "within its own grants: {body}");
    assert_eq!(
        w.admin_call("GET", "/admin/users", Some(&keymaster), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    // Users and clients through the API; the client secret is shown once.
    let (status, body) = w
        .admin_call(
            "POST",
            "/admin/users",
            Some(&admin),
            Some(json!({"name": "bob", "role": "analyst", "password": "a long enough password"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = w
        .admin_call(
            "POST",
            "/admin/clients",
            Some(&admin),
            Some(json!({"name": "etl", "role": "app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["client_secret"].as_str().unwrap().len(), 43);
    let (_, listed) = w
        .admin_call("GET", "/admin/clients", Some(&admin), None)
        .await;
    assert!(
        !listed
            .to_string()
            .contains(body["client_secret"].as_str().unwrap())
    );
    let (status, roles) = w
        .admin_call("GET", "/admin/roles", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(roles.to_string().contains("analyst"));
}

/// A client-certificate CA for the mTLS tests.
pub(super) fn ca(cn: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A client certificate for `name` (DNS SAN and CN), issued by `issuer`:
/// the certificate and key PEM.
pub(super) fn leaf_pem(
    issuer: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>,
    name: &str,
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// [`leaf_pem`] as a client identity.
fn leaf(issuer: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>, name: &str) -> reqwest::Identity {
    let (cert, key) = leaf_pem(issuer, name);
    reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_certificates_map_to_principals() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("warden test client CA");
    let stranger = ca("someone else");
    std::fs::write(dir.path().join("client-ca.pem"), trusted.pem()).unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nclient_ca = \"{}\"\nclient_auth = \"optional\"\n\n[[auth.mtls]]\nname = \"billing-svc\"\nrole = \"predict\"\nmodels = [\"iris\"]\n",
            dir.path().join("client-ca.pem").display()
        ),
    )
    .unwrap();
    let w = Warden::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let server_ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("data/tls/ca.pem")).unwrap())
            .unwrap();
    let client = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder().tls_certs_only([server_ca.clone()]);
        if let Some(i) = identity {
            b = b.identity(i);
        }
        b.build().unwrap()
    };
    let predict = |c: reqwest::Client, model: &'static str| {
        let url = w.url(&format!("/v1/models/{model}:predict"));
        async move { c.post(url).json(&iris()).send().await.map(|r| r.status()) }
    };
    let billing = client(Some(leaf(&trusted, "billing-svc")));
    assert_eq!(
        predict(billing.clone(), "iris").await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(
        predict(billing, "digits").await.unwrap(),
        StatusCode::NOT_FOUND
    );
    let unmapped = client(Some(leaf(&trusted, "unknown-svc")));
    assert_eq!(
        predict(unmapped, "iris").await.unwrap(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        predict(client(None), "iris").await.unwrap(),
        StatusCode::UNAUTHORIZED
    );
    // A certificate from another CA fails the handshake.
    assert!(
        predict(client(Some(leaf(&stranger, "billing-svc"))), "iris")
            .await
            .is_err()
    );
    // An API key still works next to the optional certificate.
    let key = w.printed_key.clone().unwrap();
    assert_eq!(
        w.post("/v1/models/iris:predict", &key, iris().to_string())
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_and_refreshed_on_an_unknown_kid() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let pk = dir.path().join("pk");
    std::fs::create_dir_all(&pk).unwrap();
    pyjwt(&["keys", pk.to_str().unwrap()]);
    // The issuer's JWKS endpoint: HTTPS with a certificate from `warden cert generate`.
    let tls = dir.path().join("issuer-tls");
    let out = Command::new(BIN)
        .args(["cert", "generate", "--out", tls.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let served = dir.path().join("www");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(pk.join("jwks-rsa.json"), served.join("jwks.json")).unwrap();
    let mut server = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/jwt_peer.py"))
        .args([
            "serve",
            served.to_str().unwrap(),
            tls.join("cert.pem").to_str().unwrap(),
            tls.join("key.pem").to_str().unwrap(),
        ])
        .env("PYTHONPATH", repo().join(".runtime/py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.jwt]]\nname = \"remote\"\nissuer = \"https://py.example\"\naudience = [\"{AUD}\"]\nalgorithms = [\"RS256\", \"ES256\"]\njwks_url = \"https://localhost:{}/jwks.json\"\njwks_ca = \"{}\"\njwks_min_refresh = \"1s\"\n",
            port.trim(),
            tls.join("cert.pem").display()
        ),
    )
    .unwrap();
    let w = Warden::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let pks = pk.to_str().unwrap();
    let claims = claims("https://py.example", "predict:iris").to_string();
    let rsa = pyjwt(&["mint", pks, "RS256", "rsa-1", &claims]);
    let ec = pyjwt(&["mint", pks, "ES256", "ec-1", &claims]);
    assert_eq!(
        w.predict_bearer("iris", &rsa).await.0,
        StatusCode::OK,
        "key fetched at start"
    );
    assert_unauthenticated("kid not yet published", w.predict_bearer("iris", &ec).await);
    // The issuer publishes its new key; the next unknown kid (after the
    // minimum refresh interval) refetches the JWKS.
    std::fs::copy(pk.join("jwks.json"), served.join("jwks.json")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        w.predict_bearer("iris", &ec).await.0,
        StatusCode::OK,
        "refreshed on an unknown kid"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// mTLS on the management listener (`admin.client_ca`, required): without
/// a certificate from the admins' CA there is no handshake at all, even
/// with a valid admin key; an operator's certificate maps to its principal
/// and works without any key, with that principal's permissions. The data
/// plane, with no client CA of its own, is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_listener_can_require_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let admins = ca("warden admins CA");
    let stranger = ca("someone else");
    let ca_file = dir.path().join("admins-ca.pem");
    std::fs::write(&ca_file, admins.pem()).unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nclient_ca = {ca_file:?}\nclient_auth = \"required\"\n\n\
             [[auth.mtls]]\nname = \"ops-laptop\"\nrole = \"admin\"\n\n\
             [[auth.mtls]]\nname = \"scraper\"\nrole = \"metrics\"\n"
        ),
    )
    .unwrap();
    let w = Warden::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let server_ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("data/tls/ca.pem")).unwrap())
            .unwrap();
    let client = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder().tls_certs_only([server_ca.clone()]);
        if let Some(i) = identity {
            b = b.identity(i);
        }
        b.build().unwrap()
    };
    let keys = w.admin_url("/admin/keys");
    // No certificate, or one from another CA: no handshake, admin key or not.
    for c in [None, Some(leaf(&stranger, "ops-laptop"))] {
        let r = client(c).get(&keys).header("x-api-key", &key).send().await;
        assert!(r.is_err(), "{r:?}");
    }
    // The operator's certificate alone: admin.
    let ops = client(Some(leaf(&admins, "ops-laptop")));
    let r = ops.get(&keys).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A certificate mapped to the metrics role: /metrics yes, keys no.
    let scraper = client(Some(leaf(&admins, "scraper")));
    let r = scraper.get(w.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = scraper.get(&keys).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A trusted but unmapped certificate has a handshake and no principal.
    let r = client(Some(leaf(&admins, "nobody")))
        .get(&keys)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The data plane asks for no certificate.
    let (status, _, _) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
}
