//! `[limits]`: rate limits, quotas, brute-force bans and where their state
//! lives (memory, or Redis shared by replicas).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, RawUrl, duration, invalid};
use crate::principal::Roles;
use crate::secret::Secret;

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// `"memory"` (default: this process only) or `"redis"` (shared by replicas).
    pub backend: Option<String>,
    /// With `backend = "redis"`: e.g. `redis://127.0.0.1:6379/0`. A URL with
    /// a password is a secret: `{ env = "…" }` or `{ file = "…" }` (written
    /// inline it is refused).
    pub redis_url: Option<RawUrl>,
    /// Prefix of every Redis key. Default `warden:`.
    pub redis_prefix: Option<String>,
    /// When Redis is unreachable, quotas `"refuse"` (default: 503) or `"allow"`.
    /// Rate limits always fall back to a local limiter; bans are not enforced.
    pub quota_when_unavailable: Option<String>,
    /// Named rate-limit policies: `default` (every authenticated request),
    /// `predict` (rows predicted), `token` (the token endpoint, per address
    /// and per account).
    pub rates: BTreeMap<String, RawRate>,
    /// Per-role overrides: `[limits.roles.analyst] predict = { ... }`.
    pub roles: BTreeMap<String, BTreeMap<String, RawRate>>,
    /// Per-key overrides: `[limits.keys.<key id>] predict = { ... }`.
    pub keys: BTreeMap<String, BTreeMap<String, RawRate>>,
    /// Query budgets in rows.
    pub quotas: Vec<RawQuota>,
    /// Brute-force bans.
    pub bans: RawBans,
}

/// One rate: `{ rate = "600/minute", burst = 60 }`.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// `N/second`, `N/minute`, `N/hour` or `N/day`.
    pub rate: String,
    /// Most units taken at once. Default: a tenth of N (at least 1).
    pub burst: Option<u64>,
}

/// `[[limits.quotas]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQuota {
    /// Principals with this role.
    pub role: String,
    /// A model name, or `*` for each model separately. Default `*`.
    pub model: Option<String>,
    /// Rows per UTC day.
    pub per_day: Option<u64>,
    /// Rows per UTC calendar month.
    pub per_month: Option<u64>,
}

/// `[limits.bans]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBans {
    /// Ban clients that keep failing authentication. Default true.
    pub enabled: Option<bool>,
    /// Failures within `window` that lead to a ban. Default 10.
    pub failures: Option<u64>,
    /// Default `1m`.
    #[serde(deserialize_with = "duration")]
    pub window: Option<Duration>,
    /// First ban. Default `1m`; each further ban doubles it.
    #[serde(deserialize_with = "duration")]
    pub base: Option<Duration>,
    /// Longest ban. Default `1h`.
    #[serde(deserialize_with = "duration")]
    pub max: Option<Duration>,
}

/// A validated rate: `quota` units per `window`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Units per window.
    pub quota: u64,
    /// The window.
    pub window: Duration,
    /// Most units at once.
    pub burst: u64,
}

/// Validated quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Role it applies to.
    pub role: String,
    /// Model, or `None` for every model (each counted separately).
    pub model: Option<String>,
    /// Rows per UTC day.
    pub per_day: Option<u64>,
    /// Rows per UTC month.
    pub per_month: Option<u64>,
}

/// A model card's budget (`[budget]`, docs/defenses.md): rows per
/// principal on that model, for every principal without the `admin` role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Rows per UTC day.
    pub per_day: Option<u64>,
    /// Rows per UTC month.
    pub per_month: Option<u64>,
}

/// Validated ban settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bans {
    /// Failures that lead to a ban.
    pub failures: u64,
    /// Window the failures are counted in.
    pub window: Duration,
    /// First ban.
    pub base: Duration,
    /// Longest ban.
    pub max: Duration,
}

/// Where limiter state lives.
#[derive(Debug, Clone)]
pub enum LimitBackend {
    /// In this process.
    Memory,
    /// In Redis.
    Redis {
        /// The URL (a secret: it may carry a password).
        url: Secret,
        /// Key prefix.
        prefix: String,
        /// Whether quotas refuse (true) or allow while Redis is down.
        quota_fail_closed: bool,
    },
}

/// Validated `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// State backend.
    pub backend: LimitBackend,
    /// Named policies.
    pub rates: BTreeMap<String, Rate>,
    /// Role overrides.
    pub role_rates: BTreeMap<String, BTreeMap<String, Rate>>,
    /// Key overrides.
    pub key_rates: BTreeMap<String, BTreeMap<String, Rate>>,
    /// Quotas.
    pub quotas: Vec<Quota>,
    /// Bans, unless disabled.
    pub bans: Option<Bans>,
}

/// Policy names Warden uses.
pub const POLICIES: [&str; 3] = ["default", "predict", "token"];

fn rate(key: &'static str, name: &str, raw: &RawRate) -> Result<Rate, ConfigError> {
    let bad = || {
        invalid(
            key,
            format!(
                "{name}: {:?} is not N/second, N/minute, N/hour or N/day",
                raw.rate
            ),
        )
    };
    let (n, per) = raw.rate.split_once('/').ok_or_else(bad)?;
    let quota: u64 = n.trim().parse().map_err(|_| bad())?;
    let window = match per.trim() {
        "second" | "s" => Duration::from_secs(1),
        "minute" | "m" => Duration::from_secs(60),
        "hour" | "h" => Duration::from_secs(3600),
        "day" | "d" => Duration::from_secs(86_400),
        _ => return Err(bad()),
    };
    if quota == 0 || quota > 1_000_000_000 {
        return Err(invalid(key, format!("{name}: N must be 1 to 10^9")));
    }
    let burst = raw.burst.unwrap_or((quota / 10).max(1));
    if burst == 0 || burst > 1_000_000_000 {
        return Err(invalid(key, format!("{name}: burst must be 1 to 10^9")));
    }
    // The bucket's depth in microseconds (burst x interval) must stay exact
    // in a double (Redis Lua numbers) and far from u64 overflow: < 2^52 µs,
    // about 142 years.
    let interval_us = (window.as_micros() as u64 / quota).max(1);
    if interval_us.checked_mul(burst).is_none_or(|d| d >= 1 << 52) {
        return Err(invalid(
            key,
            format!("{name}: burst x (window / rate) is too long; lower the burst"),
        ));
    }
    Ok(Rate {
        quota,
        window,
        burst,
    })
}

fn policy_name(key: &'static str, name: &str) -> Result<(), ConfigError> {
    if POLICIES.contains(&name) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?}: policies are {}", POLICIES.join(", ")),
        ))
    }
}

fn rate_map(
    key: &'static str,
    raw: &BTreeMap<String, RawRate>,
) -> Result<BTreeMap<String, Rate>, ConfigError> {
    raw.iter()
        .map(|(name, r)| {
            policy_name(key, name)?;
            Ok((name.clone(), rate(key, name, r)?))
        })
        .collect()
}

/// Validates `[limits]`.
pub(super) fn limits(
    raw: RawLimits,
    roles: &Roles,
    allow_readable_secret_files: bool,
) -> Result<LimitSettings, ConfigError> {
    let backend = match raw.backend.as_deref().unwrap_or("memory") {
        "memory" => {
            if raw.redis_url.is_some() {
                return Err(invalid("limits.redis_url", "needs backend = \"redis\""));
            }
            LimitBackend::Memory
        }
        "redis" => {
            let url = match raw.redis_url {
                None => {
                    return Err(invalid(
                        "limits.redis_url",
                        "backend = \"redis\" needs redis_url, e.g. redis://127.0.0.1:6379",
                    ));
                }
                Some(raw) => raw.read("limits.redis_url", allow_readable_secret_files)?,
            };
            let Ok(url_text) = std::str::from_utf8(url.expose()) else {
                return Err(invalid("limits.redis_url", "not UTF-8"));
            };
            let url_text = url_text.trim();
            if !(url_text.starts_with("redis://") || url_text.starts_with("rediss://")) {
                return Err(invalid(
                    "limits.redis_url",
                    "expected redis://host:port or rediss://host:port",
                ));
            }
            let quota_fail_closed = match raw.quota_when_unavailable.as_deref() {
                None | Some("refuse") => true,
                Some("allow") => false,
                Some(other) => {
                    return Err(invalid(
                        "limits.quota_when_unavailable",
                        format!("{other:?}: expected \"refuse\" or \"allow\""),
                    ));
                }
            };
            LimitBackend::Redis {
                url: Secret::new(url_text.as_bytes().to_vec()),
                prefix: raw.redis_prefix.unwrap_or_else(|| "warden:".into()),
                quota_fail_closed,
            }
        }
        other => {
            return Err(invalid(
                "limits.backend",
                format!("{other:?}: expected \"memory\" or \"redis\""),
            ));
        }
    };
    let mut rates = BTreeMap::new();
    for (name, r, burst) in [
        ("default", "60000/minute", 1000),
        ("predict", "6000/minute", 600),
        ("token", "5/minute", 5),
    ] {
        let raw = RawRate {
            rate: r.into(),
            burst: Some(burst),
        };
        rates.insert(name.to_string(), rate("limits.rates", name, &raw)?);
    }
    rates.extend(rate_map("limits.rates", &raw.rates)?);
    let mut role_rates = BTreeMap::new();
    for (role, map) in &raw.roles {
        if roles.get(role).is_none() {
            return Err(invalid(
                "limits.roles",
                format!("unknown role {role:?} (roles: {})", roles.names()),
            ));
        }
        role_rates.insert(role.clone(), rate_map("limits.roles", map)?);
    }
    let mut key_rates = BTreeMap::new();
    for (id, map) in &raw.keys {
        key_rates.insert(id.clone(), rate_map("limits.keys", map)?);
    }
    let mut quotas = Vec::with_capacity(raw.quotas.len());
    for q in raw.quotas {
        if roles.get(&q.role).is_none() {
            return Err(invalid(
                "limits.quotas.role",
                format!("unknown role {:?} (roles: {})", q.role, roles.names()),
            ));
        }
        let model = match q.model.as_deref() {
            None | Some("*") => None,
            Some(m) if crate::is_model_name(m) => Some(m.to_owned()),
            Some(m) => {
                return Err(invalid(
                    "limits.quotas.model",
                    format!("{m:?} is not a model name or \"*\""),
                ));
            }
        };
        if q.per_day.is_none() && q.per_month.is_none() {
            return Err(invalid(
                "limits.quotas",
                format!("role {:?}: set per_day and/or per_month", q.role),
            ));
        }
        if q.per_day == Some(0) || q.per_month == Some(0) {
            return Err(invalid("limits.quotas", "a budget must be at least 1 row"));
        }
        quotas.push(Quota {
            role: q.role,
            model,
            per_day: q.per_day,
            per_month: q.per_month,
        });
    }
    let bans = if raw.bans.enabled.unwrap_or(true) {
        let b = Bans {
            failures: raw.bans.failures.unwrap_or(10),
            window: raw.bans.window.unwrap_or(Duration::from_secs(60)),
            base: raw.bans.base.unwrap_or(Duration::from_secs(60)),
            max: raw.bans.max.unwrap_or(Duration::from_secs(3600)),
        };
        if b.failures == 0 || b.window.is_zero() || b.base.is_zero() || b.max < b.base {
            return Err(invalid(
                "limits.bans",
                "failures, window and base must be > 0, and max >= base",
            ));
        }
        Some(b)
    } else {
        None
    };
    Ok(LimitSettings {
        backend,
        rates,
        role_rates,
        key_rates,
        quotas,
        bans,
    })
}
