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

/// The same arithmetic as `gcra::step`, on Redis's clock.
const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost, T, tau = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * T
local ahead = new_tat - now
if ahead > tau then
  local rem = math.floor(math.max(tau - (tat - now), 0) / T)
  return {0, rem, tat - now, ahead - tau}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
return {1, math.floor((tau - ahead) / T), ahead, 0}
";

/// Takes `cost` from every window key, or none if one would go over.
const QUOTA: &str = r"
local cost = tonumber(ARGV[1])
local used = {}
for i, k in ipairs(KEYS) do used[i] = tonumber(redis.call('GET', k) or '0') end
for i = 1, #KEYS do
  if used[i] + cost > tonumber(ARGV[2 * i]) then
    local r = {0, i}
    for j = 1, #KEYS do r[j + 2] = used[j] end
    return r
  end
end
local r = {1, 0}
for i, k in ipairs(KEYS) do
  local n = redis.call('INCRBY', k, cost)
  if n == cost then redis.call('PEXPIRE', k, ARGV[2 * i + 1]) end
  r[i + 2] = n
end
return r
";

/// One authentication failure: counts it, and bans on the threshold with a
/// length doubling per ban level (up to the max).
const FAILURE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n < tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
local level = redis.call('INCR', KEYS[3])
local d = tonumber(ARGV[3]) * math.pow(2, level - 1)
if d > tonumber(ARGV[4]) then d = tonumber(ARGV[4]) end
redis.call('PEXPIRE', KEYS[3], math.floor(d) + tonumber(ARGV[5]))
redis.call('SET', KEYS[2], level, 'PX', math.floor(d))
return math.floor(d)
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

/// The Redis side of the limiter.
pub(crate) struct Shared {
    client: redis::Client,
    prefix: String,
    conn: RwLock<Option<ConnectionManager>>,
    rate: Script,
    quota: Script,
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
            rate: Script::new(RATE),
            quota: Script::new(QUOTA),
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

    /// One GCRA check.
    pub(crate) async fn rate(&self, key: &str, cost: u64, rate: &Rate) -> Result<Decision, Down> {
        let (t, tau) = gcra::params(rate);
        let mut conn = self.conn()?;
        let r: Vec<i64> = self
            .rate
            .key(self.key(&format!("rl:{key}")))
            .arg(cost)
            .arg(t)
            .arg(tau)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Down(e.to_string()))?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(Decision {
            allowed: at(0) == 1,
            remaining: at(1),
            reset_us: at(2),
            retry_after_us: at(3),
        })
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

    /// Takes rows from every window, or none.
    pub(crate) async fn quota(
        &self,
        windows: &[QuotaWindow],
        cost: u64,
        now: u64,
    ) -> Result<QuotaDecision, Down> {
        let mut conn = self.conn()?;
        let mut inv = self.quota.prepare_invoke();
        inv.arg(cost);
        for w in windows {
            inv.key(self.key(&w.key));
            inv.arg(w.limit);
            inv.arg(w.ends_us.saturating_sub(now) / 1000 + 1);
        }
        let r: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Down(e.to_string()))?;
        let allowed = r.first() == Some(&1);
        let exceeded = r
            .get(1)
            .copied()
            .filter(|i| *i > 0)
            .map(|i| (i - 1) as usize);
        let used = r.iter().skip(2).map(|u| (*u).max(0) as u64).collect();
        Ok(QuotaDecision {
            allowed,
            used,
            exceeded,
        })
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

    /// Records a failure; the new ban's length (µs) if it tipped over.
    pub(crate) async fn failure(&self, subject: &str, policy: &Bans) -> Result<Option<u64>, Down> {
        let mut conn = self.conn()?;
        let ms: i64 = self
            .failure
            .key(self.key(&format!("fail:{subject}")))
            .key(self.key(&format!("ban:{subject}")))
            .key(self.key(&format!("banlevel:{subject}")))
            .arg(policy.failures)
            .arg(policy.window.as_millis() as u64)
            .arg(policy.base.as_millis() as u64)
            .arg(policy.max.as_millis() as u64)
            .arg(LEVEL_MEMORY_US / 1000)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Down(e.to_string()))?;
        Ok((ms > 0).then(|| ms as u64 * 1000))
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

    /// Lifts a ban and forgets its level and failures.
    pub(crate) async fn lift(&self, subject: &str) -> Result<bool, Down> {
        let mut conn = self.conn()?;
        let removed: u64 = conn
            .del(&[
                self.key(&format!("ban:{subject}")),
                self.key(&format!("banlevel:{subject}")),
                self.key(&format!("fail:{subject}")),
            ])
            .await
            .map_err(|e| Down(e.to_string()))?;
        Ok(removed > 0)
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
        use futures_util::StreamExt;
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                let Some(this) = weak.upgrade() else { break };
                let channel = this.key_channel();
                let subscribed = match this.client.get_async_pubsub().await {
                    Ok(mut pubsub) => pubsub.subscribe(&channel).await.map(|()| pubsub),
                    Err(e) => Err(e),
                };
                drop(this);
                match subscribed {
                    Ok(pubsub) => {
                        forget(None);
                        if warned {
                            tracing::info!("key-change announcements received again");
                            warned = false;
                        }
                        let mut messages = pubsub.into_on_message();
                        while let Some(message) = messages.next().await {
                            if let Ok(id) = message.get_payload::<String>() {
                                forget(Some(&id));
                            }
                        }
                    }
                    Err(e) if !warned => {
                        tracing::warn!(error = %e, "cannot subscribe to key-change announcements; other replicas' revocations take effect within the key cache TTL");
                        warned = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
