//! Warden's abuse control (docs/pipeline.md and docs/limits.md): rate limits, quotas and
//! brute-force bans, with state in this process or shared by replicas
//! through Redis.
//!
//! - **Rate limits** are GCRA ([`gcra`]) per subject and named policy:
//!   `default` (every authenticated request, keyed by principal), `predict`
//!   (counted in predicted rows), `token` (the token endpoint, per address
//!   and per account). Policies can be overridden per role and per key.
//! - **Quotas** are row budgets per principal and model per UTC day and/or
//!   calendar month, taken all-or-nothing.
//! - **Bans**: failed authentications per subject (a client address, or a
//!   username on the token endpoint) within a window lead to a ban whose
//!   length doubles with each ban, up to a maximum.
//!
//! One request is one round trip to Redis (docs/limits.md, "Redis (replicas)"):
//! [`Limiter::charge`] takes every rate check and the quota in one script,
//! and bans are mirrored in each replica (announced through Redis pub/sub,
//! reloaded whenever the subscription is re-established), so the ban check
//! reads memory.
//!
//! With Redis: when it cannot be reached, rate limits fall back to this
//! process's own limiter (fail open, logged), quotas refuse unless configured
//! to allow (fail closed), and bans are those this replica knows of (the
//! mirror as it was, and failures counted locally since; logged).

pub mod gcra;
pub mod memory;
mod shared;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use warden_core::Principal;
use warden_core::config::{LimitBackend, LimitSettings, Rate};

pub use gcra::Decision;
use memory::Memory;
pub use memory::SystemClock;
use shared::Shared;

/// Wall-clock time in Unix microseconds (a trait so tests control it).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_us(&self) -> u64;
}

/// One quota window a request counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaWindow {
    /// Storage key (principal, model, window).
    pub key: String,
    /// Rows allowed in the window.
    pub limit: u64,
    /// When the window ends (Unix µs).
    pub ends_us: u64,
    /// `day` or `month`.
    pub name: &'static str,
}

/// The result of taking rows from quota windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDecision {
    /// Whether the rows were taken.
    pub allowed: bool,
    /// Rows used in each window (after taking, if allowed).
    pub used: Vec<u64>,
    /// The window that would have gone over.
    pub exceeded: Option<usize>,
}

/// A current ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanInfo {
    /// `addr:<ip>` or `user:<name>`.
    pub subject: String,
    /// Microseconds left.
    pub remaining_us: u64,
    /// Bans so far (the length doubles with each).
    pub level: u32,
}

/// A rate check's outcome, with what the IETF RateLimit headers need.
#[derive(Debug, Clone, Copy)]
pub struct RateOutcome {
    /// The policy name.
    pub policy: &'static str,
    /// The rate applied.
    pub rate: Rate,
    /// The decision.
    pub decision: Decision,
}

impl RateOutcome {
    /// `RateLimit-Policy: "predict";q=600;w=60`
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.policy,
            self.rate.quota,
            self.rate.window.as_secs()
        )
    }

    /// `RateLimit: "predict";r=42;t=17`
    pub fn limit_header(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.policy,
            self.decision.remaining,
            self.decision.reset_us.div_ceil(1_000_000)
        )
    }

    /// Whole seconds to wait (at least 1) when refused.
    pub fn retry_after(&self) -> u64 {
        self.decision.retry_after_us.div_ceil(1_000_000).max(1)
    }
}

/// One rate check of [`Limiter::charge`].
#[derive(Debug, Clone, Copy)]
pub struct RateCheck<'a> {
    /// The policy (`default`, `predict`, `token`).
    pub policy: &'static str,
    /// Who is counted: a principal id, `addr:<ip>`, `user:<name>`.
    pub subject: &'a str,
    /// The rate applied (see [`Limiter::rate_for`]).
    pub rate: Rate,
    /// Units taken.
    pub cost: u64,
}

/// The quota part of [`Limiter::charge`].
#[derive(Debug, Clone, Copy)]
pub struct QuotaCharge<'a> {
    /// Whose quotas.
    pub principal: &'a Principal,
    /// On which model.
    pub model: &'a str,
    /// Rows taken.
    pub rows: u64,
}

/// What [`Limiter::charge`] decided.
#[derive(Debug, Clone)]
pub struct Charged {
    /// The rate checks made, in order: all of them, or up to and including
    /// the first that refused.
    pub rates: Vec<RateOutcome>,
    /// The quota's outcome, when asked and every rate check passed.
    pub quota: Option<QuotaOutcome>,
}

/// The outcome of a quota check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaOutcome {
    /// Whether the rows were taken.
    pub allowed: bool,
    /// Rows left in the tightest window (`None`: no quota applies).
    pub remaining: Option<u64>,
    /// When refused: seconds until the exceeded window resets.
    pub retry_after: u64,
}

/// A quota window's state, for the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    /// Model.
    pub model: String,
    /// `day` or `month`.
    pub window: &'static str,
    /// Rows allowed.
    pub limit: u64,
    /// Rows used.
    pub used: u64,
    /// Seconds until the window resets.
    pub resets_in: u64,
}

/// Quota state could not be read (Redis down and quotas fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// The limiter: policies, quotas, bans, over memory or Redis.
#[derive(Debug)]
pub struct Limiter {
    settings: LimitSettings,
    clock: Arc<dyn Clock>,
    memory: Arc<Memory>,
    shared: Option<Arc<Shared>>,
    quota_fail_closed: bool,
    /// The models' own budgets (model cards' `[budget]`), by model name.
    budgets: Budgets,
    fallbacks: AtomicU64,
    last_warning: AtomicU64,
}

/// A model's budget by its name (the model cards' `[budget]`).
pub type BudgetLookup = dyn Fn(&str) -> Option<warden_core::config::Budget> + Send + Sync;

#[derive(Default)]
struct Budgets(std::sync::OnceLock<Box<BudgetLookup>>);

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Budgets(set)"
        } else {
            "Budgets(unset)"
        })
    }
}

/// One request's query-similarity lookups in the shared store (see
/// [`Limiter::similar`]; the fingerprints are warden-models' business).
#[derive(Debug)]
pub struct SimilarQuery<'a> {
    /// The model (key prefix).
    pub model: &'a str,
    /// Hash of the principal's id.
    pub principal: u64,
    /// The request's rows, in order.
    pub rows: Vec<SimilarRow<'a>>,
    /// Shared hashes that make a match.
    pub threshold: usize,
    /// Postings read per hash.
    pub chain: usize,
    /// Stored queries per model.
    pub capacity: usize,
    /// How long a stored query lives, in milliseconds.
    pub ttl_ms: u64,
}

/// One row's fingerprint, for [`SimilarQuery`].
#[derive(Debug)]
pub struct SimilarRow<'a> {
    /// Hash of the row's exact values.
    pub exact: u64,
    /// The fingerprint's hashes, descending.
    pub hashes: &'a [u32],
    /// How many of them (the first) are candidates: looked up and indexed.
    pub candidates: usize,
}

impl Limiter {
    /// A limiter over in-process state, with `clock`.
    pub fn in_memory(settings: LimitSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            settings,
            clock,
            memory: Arc::default(),
            shared: None,
            quota_fail_closed: true,
            budgets: Budgets::default(),
            fallbacks: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
        }
    }

    /// The limiter the settings ask for (connecting to Redis if configured).
    pub async fn new(settings: LimitSettings) -> Result<Self, String> {
        let backend = settings.backend.clone();
        let mut limiter = Self::in_memory(settings, Arc::new(SystemClock));
        if let LimitBackend::Redis {
            url,
            prefix,
            quota_fail_closed,
        } = backend
        {
            let url = std::str::from_utf8(url.expose())
                .map_err(|_| "limits.redis_url: not UTF-8".to_owned())?;
            let shared = Shared::connect(url, prefix).await?;
            let (memory, clock) = (Arc::clone(&limiter.memory), Arc::clone(&limiter.clock));
            shared.mirror_bans(Box::new(move |event| {
                let now = clock.now_us();
                match event {
                    shared::BanEvent::Reload(bans) => memory.replace_bans(&bans, now),
                    shared::BanEvent::Ban {
                        subject,
                        remaining_us,
                        level,
                    } => memory.mirror_ban(subject, remaining_us, level, now),
                    shared::BanEvent::Lift(subject) => {
                        memory.lift(subject, now);
                    }
                }
            }));
            limiter.shared = Some(shared);
            limiter.quota_fail_closed = quota_fail_closed;
        }
        Ok(limiter)
    }

    /// Announces to the other replicas (through Redis, when limits are
    /// shared) that the API key `id` was revoked or rotated, so they drop it
    /// from their key caches at once. Best effort: without Redis, or when
    /// it is down, the caches' TTL bounds the delay.
    pub async fn announce_key_change(&self, id: &str) {
        if let Some(s) = &self.shared
            && let Err(e) = s.announce_key_change(id).await
        {
            tracing::warn!(error = %e.0, "cannot announce a key change to other replicas; they see it within the key cache TTL");
        }
    }

    /// Calls `forget` with every key id another replica announces (see
    /// [`Self::announce_key_change`]), and with `None` whenever the
    /// subscription is (re)established (forget every key: announcements may
    /// have been missed); nothing without Redis.
    pub fn on_key_change(&self, forget: impl Fn(Option<&str>) + Send + Sync + 'static) {
        if let Some(s) = &self.shared {
            s.on_key_change(Box::new(forget));
        }
    }

    /// Looks each row's fingerprint up in the model's shared similarity
    /// store (Redis) and stores it, in one round trip: `None` when state is
    /// not shared or Redis does not answer (the caller uses its in-memory
    /// store), else per row 0 (no match), 1 (the same principal's query) or
    /// 2 (another principal's).
    pub async fn similar(&self, query: &SimilarQuery<'_>) -> Option<Vec<u8>> {
        let shared = self.shared.as_ref()?;
        match shared.similar(query).await {
            Ok(found) => Some(found),
            Err(e) => {
                self.unavailable("similarity", &e);
                None
            }
        }
    }

    /// Where the models' own budgets come from (set once, at start): each
    /// applies per principal on its model, to every principal without the
    /// `admin` role, beside the configured quotas (the tighter wins).
    pub fn set_budgets(
        &self,
        lookup: impl Fn(&str) -> Option<warden_core::config::Budget> + Send + Sync + 'static,
    ) {
        let _ = self.budgets.0.set(Box::new(lookup));
    }

    /// Checks made against the local limiter because Redis was unreachable.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    fn unavailable(&self, what: &str, error: &shared::Down) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        // Warn at most every ten seconds, not once per request.
        let now = self.clock.now_us();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) > 10_000_000
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %error.0, what, "Redis unavailable: falling back");
        }
    }

    /// The rate of `policy` for `principal`: a per-key override, else the
    /// most generous per-role override among its roles, else the policy.
    pub fn rate_for(&self, policy: &'static str, principal: Option<&Principal>) -> Rate {
        let base = self.settings.rates.get(policy).copied().unwrap_or(Rate {
            quota: 1,
            window: std::time::Duration::from_secs(1),
            burst: 1,
        });
        let Some(p) = principal else { return base };
        if let Some(rate) =
            p.id.strip_prefix("key:")
                .and_then(|id| self.settings.key_rates.get(id))
                .and_then(|m| m.get(policy))
        {
            return *rate;
        }
        p.roles
            .iter()
            .filter_map(|r| self.settings.role_rates.get(&**r)?.get(policy))
            .max_by(|a, b| {
                let per_sec = |r: &Rate| r.quota as f64 / r.window.as_secs_f64();
                per_sec(a)
                    .total_cmp(&per_sec(b))
                    .then(a.burst.cmp(&b.burst))
            })
            .copied()
            .unwrap_or(base)
    }

    /// Takes `cost` units of `policy` for `subject` (a principal id, or
    /// `addr:<ip>` / `user:<name>`).
    pub async fn rate(
        &self,
        policy: &'static str,
        subject: &str,
        rate: Rate,
        cost: u64,
    ) -> RateOutcome {
        let check = RateCheck {
            policy,
            subject,
            rate,
            cost,
        };
        match self.charge(&[check], None).await {
            Ok(Charged { rates, .. }) if !rates.is_empty() => rates[0],
            // One rate check and no quota: always answered.
            _ => RateOutcome {
                policy,
                rate,
                decision: Decision {
                    allowed: false,
                    remaining: 0,
                    reset_us: 1_000_000,
                    retry_after_us: 1_000_000,
                },
            },
        }
    }

    /// Every charge of one request, in one round trip when state is shared:
    /// the rate checks in order, stopping at the first refusal (the checks
    /// before it stay charged, as if made one after the other), then, if
    /// every one passed, `quota`'s rows from the principal's quotas on the
    /// model (all-or-nothing). `Err` only when Redis is down and quotas
    /// fail closed.
    pub async fn charge(
        &self,
        rates: &[RateCheck<'_>],
        quota: Option<QuotaCharge<'_>>,
    ) -> Result<Charged, Unavailable> {
        let now = self.clock.now_us();
        let windows = quota
            .as_ref()
            .map(|q| self.quota_windows(q.principal, q.model, now))
            .unwrap_or_default();
        let quota_rows = quota.as_ref().map_or(0, |q| q.rows);
        let keys: Vec<(String, u64, Rate)> = rates
            .iter()
            .map(|c| (format!("{}:{}", c.policy, c.subject), c.cost, c.rate))
            .collect();
        let shared = match &self.shared {
            Some(s) => match s.charge(&keys, &windows, quota_rows, now).await {
                Ok(answer) => Some(answer),
                Err(e) => {
                    self.unavailable("rate limit", &e);
                    None
                }
            },
            None => None,
        };
        let redis_down = self.shared.is_some() && shared.is_none();
        let (decisions, quota_decision) = match shared {
            Some(answer) => answer,
            None => {
                let mut decisions = Vec::with_capacity(keys.len());
                for (key, cost, rate) in &keys {
                    let d = self.memory.rate(key, *cost, rate, now);
                    decisions.push(d);
                    if !d.allowed {
                        break;
                    }
                }
                let all_passed = decisions.iter().all(|d| d.allowed);
                let q = (all_passed && !windows.is_empty() && !redis_down)
                    .then(|| self.memory.quota(&windows, quota_rows, now));
                (decisions, q)
            }
        };
        let outcomes: Vec<RateOutcome> = rates
            .iter()
            .zip(decisions)
            .map(|(c, decision)| RateOutcome {
                policy: c.policy,
                rate: c.rate,
                decision,
            })
            .collect();
        let all_passed =
            outcomes.len() == rates.len() && outcomes.iter().all(|o| o.decision.allowed);
        let quota = if quota.is_none() || !all_passed {
            None
        } else if windows.is_empty() {
            Some(QuotaOutcome {
                allowed: true,
                remaining: None,
                retry_after: 0,
            })
        } else {
            match quota_decision {
                Some(d) => Some(self.quota_outcome(&windows, &d, now)),
                // Redis is down: quotas fail closed, or let the rows through.
                None if self.quota_fail_closed => return Err(Unavailable),
                None => Some(QuotaOutcome {
                    allowed: true,
                    remaining: None,
                    retry_after: 0,
                }),
            }
        };
        Ok(Charged {
            rates: outcomes,
            quota,
        })
    }

    fn quota_outcome(&self, windows: &[QuotaWindow], d: &QuotaDecision, now: u64) -> QuotaOutcome {
        let remaining = windows
            .iter()
            .zip(&d.used)
            .map(|(w, u)| w.limit.saturating_sub(*u))
            .min();
        let retry_after = d.exceeded.and_then(|i| windows.get(i)).map_or(0, |w| {
            w.ends_us.saturating_sub(now).div_ceil(1_000_000).max(1)
        });
        QuotaOutcome {
            allowed: d.allowed,
            remaining,
            retry_after,
        }
    }

    /// The quota windows `principal` counts against on `model` at `now`.
    pub fn quota_windows(
        &self,
        principal: &Principal,
        model: &str,
        now_us: u64,
    ) -> Vec<QuotaWindow> {
        let mut windows: Vec<QuotaWindow> = Vec::new();
        let applies = |q: &&warden_core::config::Quota| {
            principal.has_role(&q.role) && q.model.as_deref().is_none_or(|m| m == model)
        };
        let budget = if principal.has_role("admin") {
            None
        } else {
            self.budgets.0.get().and_then(|lookup| lookup(model))
        };
        if budget.is_none() && !self.settings.quotas.iter().any(|q| applies(&q)) {
            // The common case needs no window names: skip formatting them.
            return windows;
        }
        let (day, day_ends, month, month_ends) = calendar(now_us);
        let card = budget.map(|b| warden_core::config::Quota {
            role: String::new(),
            model: Some(model.to_owned()),
            per_day: b.per_day,
            per_month: b.per_month,
        });
        for q in self
            .settings
            .quotas
            .iter()
            .filter(applies)
            .chain(card.as_ref())
        {
            let mut push = |name: &'static str, id: &str, limit: u64, ends_us: u64| {
                let key = format!("q:{}:{model}:{id}", principal.id);
                match windows.iter_mut().find(|w| w.key == key) {
                    Some(w) => w.limit = w.limit.min(limit),
                    None => windows.push(QuotaWindow {
                        key,
                        limit,
                        ends_us,
                        name,
                    }),
                }
            };
            if let Some(l) = q.per_day {
                push("day", &day, l, day_ends);
            }
            if let Some(l) = q.per_month {
                push("month", &month, l, month_ends);
            }
        }
        windows
    }

    /// Takes `rows` from `principal`'s quotas on `model`.
    pub async fn quota(
        &self,
        principal: &Principal,
        model: &str,
        rows: u64,
    ) -> Result<QuotaOutcome, Unavailable> {
        let charge = QuotaCharge {
            principal,
            model,
            rows,
        };
        let charged = self.charge(&[], Some(charge)).await?;
        Ok(charged.quota.unwrap_or(QuotaOutcome {
            allowed: true,
            remaining: None,
            retry_after: 0,
        }))
    }

    /// Gives back `rows` taken by [`Limiter::quota`] that were not predicted
    /// (the request was shed or failed). Best effort.
    pub async fn refund_quota(&self, principal: &Principal, model: &str, rows: u64) {
        let now = self.clock.now_us();
        let windows = self.quota_windows(principal, model, now);
        match &self.shared {
            None => self.memory.quota_refund(&windows, rows, now),
            Some(s) => {
                if let Err(e) = s.quota_refund(&windows, rows).await {
                    self.unavailable("quota refund", &e);
                }
            }
        }
    }

    /// Quota usage of `principal` on each of `models` (management API).
    pub async fn quota_usage(
        &self,
        principal: &Principal,
        models: &[String],
    ) -> Result<Vec<QuotaUsage>, Unavailable> {
        let now = self.clock.now_us();
        let mut out = Vec::new();
        for model in models {
            let windows = self.quota_windows(principal, model, now);
            let used = match &self.shared {
                None => self.memory.quota_used(&windows, now),
                Some(s) => match s.quota_used(&windows).await {
                    Ok(u) => u,
                    Err(e) => {
                        self.unavailable("quota usage", &e);
                        return Err(Unavailable);
                    }
                },
            };
            for (w, used) in windows.iter().zip(used) {
                out.push(QuotaUsage {
                    model: model.clone(),
                    window: w.name,
                    limit: w.limit,
                    used,
                    resets_in: w.ends_us.saturating_sub(now).div_ceil(1_000_000),
                });
            }
        }
        Ok(out)
    }

    /// Whether anyone may be banned now: false when bans are off, or when
    /// every ban this replica knows of has ended (and its copy of the
    /// shared bans is current), so the ban check can skip naming its
    /// subject.
    pub fn may_have_bans(&self) -> bool {
        if self.settings.bans.is_none() {
            return false;
        }
        match &self.shared {
            Some(s) if !s.bans_mirrored() => true,
            _ => self.memory.any_ban(self.clock.now_us()),
        }
    }

    /// Seconds left on `subject`'s ban, if it is banned. With Redis this
    /// reads the replica's mirror of the shared bans (no round trip), and
    /// asks Redis only while the mirror is not current.
    pub async fn banned(&self, subject: &str) -> Option<u64> {
        self.settings.bans?;
        let us = match &self.shared {
            None => self.memory.banned(subject, self.clock.now_us()),
            Some(s) if s.bans_mirrored() => self.memory.banned(subject, self.clock.now_us()),
            Some(s) => match s.banned(subject).await {
                Ok(b) => b,
                Err(e) => {
                    // Bans counted locally while Redis is down still apply here.
                    self.unavailable("ban check", &e);
                    self.memory.banned(subject, self.clock.now_us())
                }
            },
        };
        us.map(|u| u.div_ceil(1_000_000).max(1))
    }

    /// Records a failed authentication by `subject`; bans it when it reaches
    /// the threshold and returns the ban's length in seconds (the caller
    /// logs the alert).
    pub async fn failure(&self, subject: &str) -> Option<u64> {
        let policy = self.settings.bans?;
        let ban = match &self.shared {
            None => self.memory.failure(subject, &policy, self.clock.now_us()),
            Some(s) => match s.failure(subject, &policy).await {
                Ok(Some((us, level))) => {
                    // Into this replica's mirror at once (the announcement
                    // reaches the others).
                    self.memory
                        .mirror_ban(subject, us, level, self.clock.now_us());
                    Some(us)
                }
                Ok(None) => None,
                Err(e) => {
                    self.unavailable("ban", &e);
                    self.memory.failure(subject, &policy, self.clock.now_us())
                }
            },
        };
        ban.map(|us| us.div_ceil(1_000_000).max(1))
    }

    /// Every current ban.
    pub async fn bans(&self) -> Result<Vec<BanInfo>, Unavailable> {
        match &self.shared {
            None => Ok(self.memory.bans(self.clock.now_us())),
            Some(s) => s.bans().await.map_err(|e| {
                self.unavailable("ban list", &e);
                Unavailable
            }),
        }
    }

    /// Lifts `subject`'s ban; false if it was not banned.
    pub async fn lift(&self, subject: &str) -> Result<bool, Unavailable> {
        let was = self.banned(subject).await.is_some();
        let local = self.memory.lift(subject, self.clock.now_us());
        if let Some(s) = &self.shared {
            s.lift(subject).await.map_err(|e| {
                self.unavailable("ban lift", &e);
                Unavailable
            })?;
        }
        Ok(was || local)
    }
}

/// The subject a client address is limited and banned as: `addr:<ip>`, with
/// an IPv6 client counted by its /64 (one host commonly holds a whole /64,
/// so per-address counting would let it rotate through 2^64 addresses) and
/// an IPv4-mapped IPv6 address as its IPv4 address. `prefix` tells planes
/// apart (`addr`, `admin-addr`).
pub fn address_subject(prefix: &str, ip: std::net::IpAddr) -> String {
    use std::net::{IpAddr, Ipv6Addr};
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    };
    format!("{prefix}:{ip}")
}

/// Day and month window ids and their ends (Unix µs), in UTC.
fn calendar(now_us: u64) -> (String, u64, String, u64) {
    let secs = (now_us / 1_000_000) as i64;
    let day_index = secs.div_euclid(86_400);
    let day_ends = ((day_index + 1) * 86_400) as u64 * 1_000_000;
    let (y, m) = time::OffsetDateTime::from_unix_timestamp(secs)
        .map(|t| (t.year(), u8::from(t.month())))
        .unwrap_or((1970, 1));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let month_ends = time::Date::from_calendar_date(
        ny,
        time::Month::try_from(nm).unwrap_or(time::Month::January),
        1,
    )
    .map(|d| d.midnight().assume_utc().unix_timestamp())
    .unwrap_or(secs + 86_400) as u64
        * 1_000_000;
    let mut day = String::new();
    let _ = write!(day, "d{day_index}");
    (day, day_ends, format!("m{y:04}{m:02}"), month_ends)
}

#[cfg(test)]
mod tests;
