//! State in Redis, shared by every replica: one Lua script per check (one
//! round trip, atomic), keys with TTLs, Redis's own clock (`TIME`) so that
//! replicas with skewed clocks agree.
//!
//! When Redis cannot be reached the caller falls back (see `lib.rs`); the
//! connection manager reconnects in the background, and a first connection
//! that fails at start is retried every second, so Redis can come and go
//! without a restart.

use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use warden_core::config::{Bans, Rate};

use crate::gcra::{self, Decision};
use crate::memory::LEVEL_MEMORY_US;
use crate::{BanInfo, QuotaDecision, QuotaWindow};

/// Every charge of one request in one round trip: rate checks in order
/// (the same arithmetic as `gcra::step`, on Redis's clock), then quota
/// windows. KEYS: the rate cells, then the quota windows. ARGV[1]: the
/// number of rate cells; per cell its cost, T and tau; then the quota's
/// cost; per window its limit and TTL (ms). The first refused rate check
/// ends the script (the checks before it stay charged, as if made one after
/// the other); the quota is taken all-or-nothing after every rate check
/// passed. Returns per rate check made {allowed, remaining, reset, retry
/// after}, then, if windows were given and reached, {allowed, exceeded
/// window (1-based, 0 none), used per window...}.
const CHARGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nr = tonumber(ARGV[1])
local out = {}
for i = 1, nr do
  local cost, T, tau = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * T
  local ahead = new_tat - now
  if ahead > tau then
    local rem = math.floor(math.max(tau - (tat - now), 0) / T)
    out[#out + 1] = 0; out[#out + 1] = rem; out[#out + 1] = tat - now; out[#out + 1] = ahead - tau
    return out
  end
  redis.call('SET', KEYS[i], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  out[#out + 1] = 1; out[#out + 1] = math.floor((tau - ahead) / T); out[#out + 1] = ahead; out[#out + 1] = 0
end
local nq = #KEYS - nr
if nq == 0 then return out end
local base = 3 * nr + 2
local cost = tonumber(ARGV[base])
local used = {}
for i = 1, nq do used[i] = tonumber(redis.call('GET', KEYS[nr + i]) or '0') end
for i = 1, nq do
  if used[i] + cost > tonumber(ARGV[base + 2 * i - 1]) then
    out[#out + 1] = 0; out[#out + 1] = i
    for j = 1, nq do out[#out + 1] = used[j] end
    return out
  end
end
out[#out + 1] = 1; out[#out + 1] = 0
for i = 1, nq do
  local n = redis.call('INCRBY', KEYS[nr + i], cost)
  if n == cost then redis.call('PEXPIRE', KEYS[nr + i], ARGV[base + 2 * i]) end
  out[#out + 1] = n
end
return out
";

/// One authentication failure: counts it, and bans on the threshold with a
/// length doubling per ban level (up to the max), announcing the ban on
/// the bans channel (KEYS[4]) as `ban <ms> <level> <subject>`. Returns
/// {ban length in ms (0: no ban), level}.
const FAILURE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n < tonumber(ARGV[1]) then return {0, 0} end
redis.call('DEL', KEYS[1])
local level = redis.call('INCR', KEYS[3])
local d = tonumber(ARGV[3]) * math.pow(2, level - 1)
if d > tonumber(ARGV[4]) then d = tonumber(ARGV[4]) end
redis.call('PEXPIRE', KEYS[3], math.floor(d) + tonumber(ARGV[5]))
redis.call('SET', KEYS[2], level, 'PX', math.floor(d))
redis.call('PUBLISH', KEYS[4], string.format('ban %d %d %s', math.floor(d), level, ARGV[6]))
return {math.floor(d), level}
";

/// Query similarity (docs/defenses.md, "Query-based attacks: similarity"):
/// for each row of a request, looks its fingerprint up among the model's
/// stored queries, then stores it (so later rows of the same request see
/// earlier ones). KEYS[1] is the model's key prefix; ARGV: principal hash,
/// threshold, postings read per hash, capacity, TTL (ms), then per row: the
/// exact-values hash, how many of its hashes are candidates, how many
/// hashes, and the hashes (descending). Entries live in `capacity` slots
/// (`e:<id mod capacity>`, overwritten cyclically, with a TTL), indexed
/// under the candidate hashes (a hash's list holds its newest ids). Returns
/// per row 0 (no match), 1 (matches the same principal's query) or 2
/// (another's).
const SIMILAR: &str = r"
local base, who = KEYS[1], ARGV[1]
local t, chain, cap, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local results, pos = {}, 6
while pos <= #ARGV do
  local exact, ncand, nh = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  local first = pos + 3
  local q, hashes = {}, {}
  for i = first, first + nh - 1 do q[ARGV[i]] = true; hashes[#hashes + 1] = ARGV[i] end
  local found, seen = 0, {}
  for i = first, first + ncand - 1 do
    local ids = redis.call('LRANGE', base .. 'h:' .. ARGV[i], 0, chain - 1)
    for _, id in ipairs(ids) do
      if not seen[id] then
        seen[id] = true
        local e = redis.call('HMGET', base .. 'e:' .. (tonumber(id) % cap), 'id', 'x', 'w', 'h')
        if e[1] == id and e[2] ~= exact then
          local n = 0
          for h in string.gmatch(e[4], '[^,]+') do if q[h] then n = n + 1 end end
          if n >= t then
            if e[3] == who then found = 1 else found = 2 end
            break
          end
        end
      end
    end
    if found > 0 then break end
  end
  local id = tostring(redis.call('INCR', base .. 'n'))
  local ek = base .. 'e:' .. (tonumber(id) % cap)
  redis.call('HSET', ek, 'id', id, 'x', exact, 'w', who, 'h', table.concat(hashes, ','))
  redis.call('PEXPIRE', ek, ttl)
  for i = first, first + ncand - 1 do
    local hk = base .. 'h:' .. ARGV[i]
    redis.call('LPUSH', hk, id)
    redis.call('LTRIM', hk, 0, chain - 1)
    redis.call('PEXPIRE', hk, ttl)
  end
  results[#results + 1] = found
  pos = first + nh
end
return results
";

/// Called with a changed key's id, or `None` for "forget every key".
pub(crate) type ForgetKey = dyn Fn(Option<&str>) + Send + Sync;

/// Run once a subscription is established; false drops it (to retry).
type Established = dyn Fn(std::sync::Arc<Shared>) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
    + Send
    + Sync;

/// What the ban announcements say (see [`Shared::mirror_bans`]).
#[derive(Debug)]
pub(crate) enum BanEvent<'a> {
    /// Every current ban, read after (re)subscribing.
    Reload(Vec<BanInfo>),
    /// A new ban.
    Ban {
        subject: &'a str,
        remaining_us: u64,
        level: u32,
    },
    /// A lifted ban.
    Lift(&'a str),
}

/// The Redis side of the limiter.
pub(crate) struct Shared {
    client: redis::Client,
    prefix: String,
    conn: RwLock<Option<ConnectionManager>>,
    /// See [`Shared::bans_mirrored`].
    bans_live: std::sync::atomic::AtomicBool,
    charge: Script,
    failure: Script,
    similar: Script,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Redis could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Down(pub(crate) String);

fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

impl Shared {
    /// Connects (or keeps trying in the background). Fails only on a bad URL.
    pub(crate) async fn connect(url: &str, prefix: String) -> Result<std::sync::Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("limits.redis_url: {e}"))?;
        let shared = std::sync::Arc::new(Self {
            client,
            prefix,
            conn: RwLock::new(None),
            bans_live: std::sync::atomic::AtomicBool::new(false),
            charge: Script::new(CHARGE),
            failure: Script::new(FAILURE),
            similar: Script::new(SIMILAR),
        });
        if !shared.try_connect().await {
            tracing::warn!("Redis is unreachable at start; limits fall back until it answers");
            let weak = std::sync::Arc::downgrade(&shared);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let Some(s) = weak.upgrade() else { break };
                    if s.try_connect().await {
                        tracing::info!("Redis reachable: limits are shared again");
                        break;
                    }
                }
            });
        }
        Ok(shared)
    }

    async fn try_connect(&self) -> bool {
        match self
            .client
            .get_connection_manager_with_config(config())
            .await
        {
            Ok(c) => {
                *self
                    .conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
                true
            }
            Err(_) => false,
        }
    }

    fn conn(&self) -> Result<ConnectionManager, Down> {
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| Down("not connected".into()))
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// Every charge of one request in one round trip (the `CHARGE`
    /// script): the rate checks in order, up to the first refusal, then the
    /// quota windows if every rate check passed. Returns the decisions made
    /// and the quota's, if reached.
    pub(crate) async fn charge(
        &self,
        rates: &[(String, u64, Rate)],
        windows: &[QuotaWindow],
        quota_cost: u64,
        now: u64,
    ) -> Result<(Vec<Decision>, Option<QuotaDecision>), Down> {
        let mut conn = self.conn()?;
        let mut inv = self.charge.prepare_invoke();
        inv.arg(rates.len());
        for (key, cost, rate) in rates {
            let (t, tau) = gcra::params(rate);
            inv.key(self.key(&format!("rl:{key}")))
                .arg(*cost)
                .arg(t)
                .arg(tau);
        }
        inv.arg(quota_cost);
        for w in windows {
            inv.key(self.key(&w.key));
            inv.arg(w.limit);
            inv.arg(w.ends_us.saturating_sub(now) / 1000 + 1);
        }
        let r: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Down(e.to_string()))?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        let mut decisions = Vec::with_capacity(rates.len());
        let mut pos = 0;
        while decisions.len() < rates.len() && pos + 4 <= r.len() {
            let d = Decision {
                allowed: at(pos) == 1,
                remaining: at(pos + 1),
                reset_us: at(pos + 2),
                retry_after_us: at(pos + 3),
            };
            pos += 4;
            decisions.push(d);
            if !d.allowed {
                return Ok((decisions, None));
            }
        }
        if decisions.len() < rates.len() {
            return Err(Down("short answer from the charge script".into()));
        }
        if windows.is_empty() {
            return Ok((decisions, None));
        }
        if r.len() < pos + 2 + windows.len() {
            return Err(Down("short answer from the charge script".into()));
        }
        let allowed = at(pos) == 1;
        let exceeded = r
            .get(pos + 1)
            .copied()
            .filter(|i| *i > 0)
            .map(|i| (i - 1) as usize);
        let used = (0..windows.len()).map(|i| at(pos + 2 + i)).collect();
        Ok((
            decisions,
            Some(QuotaDecision {
                allowed,
                used,
                exceeded,
            }),
        ))
    }

    /// Query similarity, every row of a request in one call: per row 0 no
    /// match, 1 the same principal's, 2 another's.
    pub(crate) async fn similar(&self, q: &crate::SimilarQuery<'_>) -> Result<Vec<u8>, Down> {
        let mut conn = self.conn()?;
        let mut inv = self.similar.prepare_invoke();
        inv.key(self.key(&format!("sim:{}:", q.model)))
            .arg(q.principal.to_string())
            .arg(q.threshold)
            .arg(q.chain)
            .arg(q.capacity)
            .arg(q.ttl_ms);
        for row in &q.rows {
            inv.arg(row.exact.to_string())
                .arg(row.candidates)
                .arg(row.hashes.len());
            for h in row.hashes {
                inv.arg(*h);
            }
        }
        let found: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Down(e.to_string()))?;
        Ok(found
            .into_iter()
            .map(|f| u8::try_from(f.clamp(0, 2)).unwrap_or(0))
            .collect())
    }

    /// Gives rows back to every window (never below zero).
    pub(crate) async fn quota_refund(
        &self,
        windows: &[QuotaWindow],
        cost: u64,
    ) -> Result<(), Down> {
        let mut conn = self.conn()?;
        for w in windows {
            let left: i64 = conn
                .decr(self.key(&w.key), cost)
                .await
                .map_err(|e| Down(e.to_string()))?;
            if left < 0 {
                let _: () = conn
                    .set_options(
                        self.key(&w.key),
                        0,
                        redis::SetOptions::default().with_expiration(redis::SetExpiry::KEEPTTL),
                    )
                    .await
                    .map_err(|e| Down(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Rows used in each window.
    pub(crate) async fn quota_used(&self, windows: &[QuotaWindow]) -> Result<Vec<u64>, Down> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let keys: Vec<String> = windows.iter().map(|w| self.key(&w.key)).collect();
        let used: Vec<Option<u64>> = conn.mget(keys).await.map_err(|e| Down(e.to_string()))?;
        Ok(used.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Microseconds left on a ban.
    pub(crate) async fn banned(&self, subject: &str) -> Result<Option<u64>, Down> {
        let mut conn = self.conn()?;
        let ms: i64 = conn
            .pttl(self.key(&format!("ban:{subject}")))
            .await
            .map_err(|e| Down(e.to_string()))?;
        Ok((ms > 0).then(|| ms as u64 * 1000))
    }

    /// Records a failure; the new ban's length (µs) and level if it tipped
    /// over (the ban is announced to every replica).
    pub(crate) async fn failure(
        &self,
        subject: &str,
        policy: &Bans,
    ) -> Result<Option<(u64, u32)>, Down> {
        let mut conn = self.conn()?;
        let r: Vec<i64> = self
            .failure
            .key(self.key(&format!("fail:{subject}")))
            .key(self.key(&format!("ban:{subject}")))
            .key(self.key(&format!("banlevel:{subject}")))
            .key(self.ban_channel())
            .arg(policy.failures)
            .arg(policy.window.as_millis() as u64)
            .arg(policy.base.as_millis() as u64)
            .arg(policy.max.as_millis() as u64)
            .arg(LEVEL_MEMORY_US / 1000)
            .arg(subject)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Down(e.to_string()))?;
        let ms = r.first().copied().unwrap_or(0);
        let level = r.get(1).copied().unwrap_or(1).clamp(1, i64::from(u32::MAX)) as u32;
        Ok((ms > 0).then(|| (ms as u64 * 1000, level)))
    }

    /// Every current ban (SCAN; for the management API).
    pub(crate) async fn bans(&self) -> Result<Vec<BanInfo>, Down> {
        let mut conn = self.conn()?;
        let pattern = self.key("ban:*");
        let mut keys: Vec<String> = Vec::new();
        {
            let mut iter: redis::AsyncIter<'_, String> = conn
                .scan_match(&pattern)
                .await
                .map_err(|e| Down(e.to_string()))?;
            while let Some(item) = iter.next_item().await {
                keys.push(item.map_err(|e| Down(e.to_string()))?);
                if keys.len() >= 10_000 {
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        let strip = self.key("ban:");
        for k in keys {
            let ms: i64 = conn.pttl(&k).await.map_err(|e| Down(e.to_string()))?;
            let level: Option<u32> = conn.get(&k).await.map_err(|e| Down(e.to_string()))?;
            if ms > 0 {
                out.push(BanInfo {
                    subject: k.strip_prefix(&strip).unwrap_or(&k).to_owned(),
                    remaining_us: ms as u64 * 1000,
                    level: level.unwrap_or(1),
                });
            }
        }
        Ok(out)
    }

    /// Lifts a ban, forgets its level and failures, and announces the
    /// lift to every replica (one transaction).
    pub(crate) async fn lift(&self, subject: &str) -> Result<bool, Down> {
        let mut conn = self.conn()?;
        let (removed, _): (u64, i64) = redis::pipe()
            .atomic()
            .del(&[
                self.key(&format!("ban:{subject}")),
                self.key(&format!("banlevel:{subject}")),
                self.key(&format!("fail:{subject}")),
            ])
            .publish(self.ban_channel(), format!("lift {subject}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| Down(e.to_string()))?;
        Ok(removed > 0)
    }

    /// The channel bans and lifts are announced on.
    fn ban_channel(&self) -> String {
        self.key("bans:changed")
    }

    /// Whether this replica's copy of the bans is current: subscribed to
    /// the announcements and loaded since (re)subscribing.
    pub(crate) fn bans_mirrored(&self) -> bool {
        self.bans_live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Keeps `mirror` a copy of the shared bans, for as long as `self`
    /// lives: subscribes to the announcements, then loads every current ban
    /// (`BanMirror::Reload`), then applies each announcement. While the
    /// subscription is down the copy is not used ([`Self::bans_mirrored`]
    /// is false and ban checks ask Redis).
    pub(crate) fn mirror_bans(
        self: &std::sync::Arc<Self>,
        mirror: Box<dyn Fn(BanEvent<'_>) + Send + Sync>,
    ) {
        let mirror: std::sync::Arc<dyn Fn(BanEvent<'_>) + Send + Sync> = mirror.into();
        let on_message = std::sync::Arc::clone(&mirror);
        self.watch(
            self.ban_channel(),
            "ban announcements",
            Box::new(move |this: std::sync::Arc<Self>| {
                let mirror = std::sync::Arc::clone(&mirror);
                Box::pin(async move {
                    match this.bans().await {
                        Ok(bans) => {
                            mirror(BanEvent::Reload(bans));
                            this.bans_live
                                .store(true, std::sync::atomic::Ordering::Release);
                            true
                        }
                        Err(_) => false,
                    }
                })
            }),
            Box::new(move |payload: &str| {
                // `ban <ms> <level> <subject>` or `lift <subject>`; the
                // subject comes last, whole (it may contain spaces).
                if let Some(subject) = payload.strip_prefix("lift ") {
                    on_message(BanEvent::Lift(subject));
                } else if let Some(rest) = payload.strip_prefix("ban ") {
                    let mut parts = rest.splitn(3, ' ');
                    if let (Some(Ok(ms)), Some(Ok(level)), Some(subject)) = (
                        parts.next().map(str::parse::<u64>),
                        parts.next().map(str::parse::<u32>),
                        parts.next(),
                    ) {
                        on_message(BanEvent::Ban {
                            subject,
                            remaining_us: ms.saturating_mul(1000),
                            level,
                        });
                    }
                }
            }),
            |s| {
                s.bans_live
                    .store(false, std::sync::atomic::Ordering::Release)
            },
        );
    }

    /// The channel replicas announce changed API keys on.
    fn key_channel(&self) -> String {
        self.key("keys:changed")
    }

    /// Tells every replica that the key `id` changed (revoked, rotated).
    pub(crate) async fn announce_key_change(&self, id: &str) -> Result<(), Down> {
        let mut conn = self.conn()?;
        let _: i64 = conn
            .publish(self.key_channel(), id)
            .await
            .map_err(|e| Down(e.to_string()))?;
        Ok(())
    }

    /// Calls `forget` with each key id announced by any replica, for as long
    /// as `self` lives, and with `None` each time the subscription is
    /// (re)established: announcements made while it was down are missed,
    /// so the caller forgets everything then. Resubscribes after a second
    /// when the subscription drops.
    pub(crate) fn on_key_change(self: &std::sync::Arc<Self>, forget: Box<ForgetKey>) {
        let forget: std::sync::Arc<ForgetKey> = forget.into();
        let on_message = std::sync::Arc::clone(&forget);
        self.watch(
            self.key_channel(),
            "key-change announcements",
            Box::new(move |_| {
                forget(None);
                Box::pin(std::future::ready(true))
            }),
            Box::new(move |id: &str| on_message(Some(id))),
            |_| {},
        );
    }

    /// Subscribes to `channel` for as long as `self` lives: once subscribed,
    /// runs `established` (false: drop the subscription and retry), then
    /// hands each message to `message`; when the subscription drops (or
    /// cannot be made), calls `lost` and resubscribes a second later. Messages published between subscribing and the
    /// end of `established` wait in the subscription and come after it.
    fn watch(
        self: &std::sync::Arc<Self>,
        channel: String,
        what: &'static str,
        established: Box<Established>,
        message: Box<dyn Fn(&str) + Send + Sync>,
        lost: fn(&Self),
    ) {
        use futures_util::StreamExt;
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                let Some(this) = weak.upgrade() else { break };
                let subscribed = match this.client.get_async_pubsub().await {
                    Ok(mut pubsub) => pubsub.subscribe(&channel).await.map(|()| pubsub),
                    Err(e) => Err(e),
                };
                match subscribed {
                    Ok(pubsub) if established(std::sync::Arc::clone(&this)).await => {
                        drop(this);
                        if warned {
                            tracing::info!(what, "announcements received again");
                            warned = false;
                        }
                        let mut messages = pubsub.into_on_message();
                        while let Some(m) = messages.next().await {
                            if let Ok(payload) = m.get_payload::<String>() {
                                message(&payload);
                            }
                        }
                    }
                    Ok(_) => drop(this),
                    Err(e) if !warned => {
                        drop(this);
                        tracing::warn!(error = %e, what, "cannot subscribe to announcements from other replicas; retrying every second");
                        warned = true;
                    }
                    Err(_) => drop(this),
                }
                if let Some(this) = weak.upgrade() {
                    lost(&this);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
