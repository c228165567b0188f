//! The `[upstream]` table of a card: gateway mode (docs/gateway.md).

use serde::Deserialize;

use super::CardError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// Base URL of the server (`https://triton.internal:8000`), or its gRPC
    /// address (`grpcs://triton.internal:8001`).
    url: String,
    /// The model's name on the server. Default: this model's name.
    model: Option<String>,
    /// The version to ask the server for. Default: the server's choice.
    version: Option<String>,
    /// PEM file of the CA that signed the server's certificate (https);
    /// relative paths are from the model folder. Default: the system roots.
    ca: Option<std::path::PathBuf>,
    /// PEM client certificate chain, for servers that require mTLS.
    client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `client_cert`.
    client_key: Option<std::path::PathBuf>,
    /// Sent as `Authorization: Bearer <token>` on every call and readiness
    /// check: `{ env = "…" }` or `{ file = "…" }` (relative to the model
    /// folder), never inline.
    bearer_token: Option<warden_core::SecretSource>,
    /// Default 1s.
    #[serde(default, deserialize_with = "warden_core::config::duration")]
    connect_timeout: Option<std::time::Duration>,
    /// Whole-call limit (connect, send, answer). Default 10s.
    #[serde(default, deserialize_with = "warden_core::config::duration")]
    timeout: Option<std::time::Duration>,
    /// Retries after a failure to connect (never after a request was sent). Default 2.
    retries: Option<u32>,
    /// Calls in flight to the server at once; beyond it requests wait up
    /// to `runtime.queue_timeout`, then get `overloaded`. Default 64.
    max_in_flight: Option<usize>,
    /// How often `/v2/models/{model}/ready` is polled. Default 5s.
    #[serde(default, deserialize_with = "warden_core::config::duration")]
    health_interval: Option<std::time::Duration>,
    /// Consecutive failures that open the circuit breaker. Default 5.
    breaker_failures: Option<u32>,
    /// How long an open breaker refuses calls before one trial. Default 10s.
    #[serde(default, deserialize_with = "warden_core::config::duration")]
    breaker_open_for: Option<std::time::Duration>,
    /// Acknowledges `http://` to a host that is not loopback: the validated
    /// inputs and the answers then cross the network in clear.
    #[serde(default)]
    allow_plaintext: bool,
}

/// A checked `[upstream]` table (gateway mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Base URL, without a trailing `/`.
    pub url: String,
    /// The upstream speaks the Open Inference Protocol over gRPC
    /// (`grpc://` or `grpcs://`), not REST.
    pub grpc: bool,
    /// The model's name on the server (`None`: the same as Warden's).
    pub model: Option<String>,
    /// The version asked for, if any.
    pub version: Option<String>,
    /// CA file (as written; relative to the model folder).
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key files, for mTLS to the server.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Where the bearer token sent to the server comes from.
    pub bearer_token: Option<warden_core::SecretSource>,
    /// Connect timeout.
    pub connect_timeout: std::time::Duration,
    /// Whole-call timeout.
    pub timeout: std::time::Duration,
    /// Retries on connection failure.
    pub retries: u32,
    /// Calls in flight at once.
    pub max_in_flight: usize,
    /// Health-check period.
    pub health_interval: std::time::Duration,
    /// Failures in a row that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open.
    pub breaker_open_for: std::time::Duration,
}

impl Upstream {
    /// An `[upstream]` table's contents, checked as a card's would be
    /// (`warden model init --upstream`).
    pub fn parse_table(text: &str) -> Result<Self, CardError> {
        let raw: RawUpstream = toml::from_str(text).map_err(|e| CardError(e.to_string()))?;
        upstream(raw)
    }
}

pub(super) fn upstream(raw: RawUpstream) -> Result<Upstream, CardError> {
    let bad = |key: &str, msg: &str| CardError(format!("upstream.{key}: {msg}"));
    let url = raw.url.trim_end_matches('/').to_owned();
    // gRPC upstreams: grpcs:// is gRPC over TLS, grpc:// over plaintext
    // HTTP/2, with the same rules as https:// and http://.
    let (url, grpc) = match url.split_once("://") {
        Some(("grpcs", rest)) => (format!("https://{rest}"), true),
        Some(("grpc", rest)) => (format!("http://{rest}"), true),
        _ => (url, false),
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            bad(
                "url",
                "must start with http://, https://, grpc:// or grpcs://",
            )
        })?;
    if rest.is_empty() || rest.contains(['?', '#', '@', ' ']) {
        return Err(bad(
            "url",
            "must be a base URL: scheme, host, optional port and path; no credentials, query or fragment",
        ));
    }
    let parsed = reqwest::Url::parse(&url).map_err(|e| bad("url", &format!("not a URL: {e}")))?;
    let host = parsed.host_str().ok_or_else(|| bad("url", "no host"))?;
    let https = parsed.scheme() == "https";
    if !https && (raw.ca.is_some() || raw.client_cert.is_some()) {
        return Err(bad("ca", "ca and client_cert need an https:// url"));
    }
    if !https && raw.bearer_token.is_some() && !raw.allow_plaintext {
        return Err(bad(
            "bearer_token",
            "a token is sent over https:// only (or set upstream.allow_plaintext = true)",
        ));
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !https && !loopback && !raw.allow_plaintext {
        return Err(bad(
            "url",
            "plaintext http:// to a host that is not loopback sends inputs and answers in clear: use https:// or set upstream.allow_plaintext = true",
        ));
    }
    for (key, v) in [("model", &raw.model), ("version", &raw.version)] {
        if let Some(v) = v
            && !warden_core::is_model_name(v)
        {
            return Err(bad(key, "1-64 letters, digits, '-', '_' or '.'"));
        }
    }
    let client_identity = match (raw.client_cert, raw.client_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(bad("client_cert", "client_cert and client_key go together")),
    };
    let positive = |key: &str, d: Option<std::time::Duration>, default: u64| {
        let d = d.unwrap_or(std::time::Duration::from_millis(default));
        if d.is_zero() || d > std::time::Duration::from_secs(3600) {
            Err(bad(key, "must be between 1ms and 1h"))
        } else {
            Ok(d)
        }
    };
    let retries = raw.retries.unwrap_or(2);
    if retries > 10 {
        return Err(bad("retries", "at most 10"));
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(64);
    if !(1..=100_000).contains(&max_in_flight) {
        return Err(bad("max_in_flight", "must be between 1 and 100000"));
    }
    let breaker_failures = raw.breaker_failures.unwrap_or(5);
    if breaker_failures == 0 {
        return Err(bad("breaker_failures", "must be at least 1"));
    }
    if grpc && parsed.path() != "/" {
        return Err(bad(
            "url",
            "a gRPC upstream is a host and port, without a path",
        ));
    }
    Ok(Upstream {
        url,
        grpc,
        model: raw.model,
        version: raw.version,
        ca: raw.ca,
        client_identity,
        bearer_token: raw.bearer_token,
        connect_timeout: positive("connect_timeout", raw.connect_timeout, 1000)?,
        timeout: positive("timeout", raw.timeout, 10_000)?,
        retries,
        max_in_flight,
        health_interval: positive("health_interval", raw.health_interval, 5000)?,
        breaker_failures,
        breaker_open_for: positive("breaker_open_for", raw.breaker_open_for, 10_000)?,
    })
}
