//! In-process state: the single-node default, and the local fallback of the
//! Redis backend. Every map is bounded: past [`MAX_ENTRIES`] expired entries
//! are dropped, and if that is not enough the oldest failure counters go
//! first (never bans or quota counts).

use std::collections::HashMap;
use std::sync::Mutex;

use warden_core::config::{Bans, Rate};

use crate::gcra::{self, Decision};
use crate::{BanInfo, Clock, QuotaDecision, QuotaWindow};

/// Most entries per map.
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
struct BanState {
    /// Ban end (µs), 0 when not banned.
    until: u64,
    /// Bans so far; decides the next length.
    level: u32,
    /// When the level is forgotten (µs).
    level_expires: u64,
}

/// State in this process.
#[derive(Debug, Default)]
pub struct Memory {
    tats: Mutex<HashMap<String, u64>>,
    quotas: Mutex<HashMap<String, (u64, u64)>>,
    failures: Mutex<HashMap<String, (u64, u64)>>,
    bans: Mutex<HashMap<String, BanState>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Memory {
    /// One GCRA check at `now`.
    pub fn rate(&self, key: &str, cost: u64, rate: &Rate, now: u64) -> Decision {
        let mut tats = lock(&self.tats);
        let (decision, new_tat) = gcra::step(tats.get(key).copied(), now, cost, rate);
        if let Some(t) = new_tat {
            if tats.len() >= MAX_ENTRIES && !tats.contains_key(key) {
                tats.retain(|_, tat| *tat > now);
            }
            if tats.len() < MAX_ENTRIES || tats.contains_key(key) {
                tats.insert(key.to_owned(), t);
            }
        }
        decision
    }

    /// Takes `cost` rows from every window, or none if any would go over.
    pub fn quota(&self, windows: &[QuotaWindow], cost: u64, now: u64) -> QuotaDecision {
        let mut quotas = lock(&self.quotas);
        let used: Vec<u64> = windows
            .iter()
            .map(|w| match quotas.get(&w.key) {
                Some((used, expires)) if *expires > now => *used,
                _ => 0,
            })
            .collect();
        if let Some(i) = windows
            .iter()
            .zip(&used)
            .position(|(w, u)| u.saturating_add(cost) > w.limit)
        {
            return QuotaDecision {
                allowed: false,
                used,
                exceeded: Some(i),
            };
        }
        if quotas.len() >= MAX_ENTRIES {
            quotas.retain(|_, (_, expires)| *expires > now);
        }
        let used = windows
            .iter()
            .zip(used)
            .map(|(w, u)| {
                let total = u + cost;
                quotas.insert(w.key.clone(), (total, w.ends_us));
                total
            })
            .collect();
        QuotaDecision {
            allowed: true,
            used,
            exceeded: None,
        }
    }

    /// Rows used in each window.
    pub fn quota_used(&self, windows: &[QuotaWindow], now: u64) -> Vec<u64> {
        let quotas = lock(&self.quotas);
        windows
            .iter()
            .map(|w| match quotas.get(&w.key) {
                Some((used, expires)) if *expires > now => *used,
                _ => 0,
            })
            .collect()
    }

    /// Microseconds left on `subject`'s ban, if banned.
    pub fn banned(&self, subject: &str, now: u64) -> Option<u64> {
        lock(&self.bans)
            .get(subject)
            .filter(|b| b.until > now)
            .map(|b| b.until - now)
    }

    /// Records one failure; returns the new ban's length (µs) if this one
    /// tipped `subject` over the threshold.
    pub fn failure(&self, subject: &str, policy: &Bans, now: u64) -> Option<u64> {
        let window = policy.window.as_micros() as u64;
        let count = {
            let mut failures = lock(&self.failures);
            if failures.len() >= MAX_ENTRIES && !failures.contains_key(subject) {
                failures.retain(|_, (_, ends)| *ends > now);
                if failures.len() >= MAX_ENTRIES {
                    failures.clear();
                }
            }
            let entry = failures
                .entry(subject.to_owned())
                .or_insert((0, now + window));
            if entry.1 <= now {
                *entry = (0, now + window);
            }
            entry.0 += 1;
            let count = entry.0;
            if count >= policy.failures {
                failures.remove(subject);
            }
            count
        };
        if count < policy.failures {
            return None;
        }
        let mut bans = lock(&self.bans);
        if bans.len() >= MAX_ENTRIES {
            bans.retain(|_, b| b.until > now || b.level_expires > now);
        }
        let state = bans.entry(subject.to_owned()).or_default();
        if state.level_expires <= now {
            state.level = 0;
        }
        state.level = state.level.saturating_add(1);
        let length = ban_length(policy, state.level);
        state.until = now + length;
        state.level_expires = now + length + LEVEL_MEMORY_US;
        Some(length)
    }

    /// Every current ban.
    pub fn bans(&self, now: u64) -> Vec<BanInfo> {
        lock(&self.bans)
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(k, b)| BanInfo {
                subject: k.clone(),
                remaining_us: b.until - now,
                level: b.level,
            })
            .collect()
    }

    /// Lifts a ban (and forgets its level and failures). False if none.
    pub fn lift(&self, subject: &str, now: u64) -> bool {
        lock(&self.failures).remove(subject);
        lock(&self.bans)
            .remove(subject)
            .is_some_and(|b| b.until > now)
    }
}

/// How long after a ban ends its level is remembered (so a client that
/// resumes guessing gets the doubled length): a day.
pub const LEVEL_MEMORY_US: u64 = 86_400_000_000;

/// The length of ban number `level` (1-based): base, doubling, at most max.
pub fn ban_length(policy: &Bans, level: u32) -> u64 {
    let base = policy.base.as_micros() as u64;
    let max = policy.max.as_micros() as u64;
    let factor = 1u64
        .checked_shl(level.saturating_sub(1))
        .unwrap_or(u64::MAX);
    base.saturating_mul(factor).min(max)
}

/// The system clock in Unix microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bans() -> Bans {
        Bans {
            failures: 10,
            window: Duration::from_secs(60),
            base: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        }
    }

    #[test]
    fn ten_failures_in_a_minute_ban_and_bans_double_up_to_the_max() {
        let m = Memory::default();
        let p = bans();
        let mut now = 1_000_000_000;
        let mut lengths = Vec::new();
        for _ in 0..8 {
            for i in 0..9 {
                assert_eq!(m.failure("addr:1.2.3.4", &p, now), None, "failure {i}");
            }
            let len = m.failure("addr:1.2.3.4", &p, now).unwrap();
            assert_eq!(m.banned("addr:1.2.3.4", now), Some(len));
            lengths.push(len / 1_000_000);
            now += len; // the ban runs out
            assert_eq!(m.banned("addr:1.2.3.4", now), None);
        }
        assert_eq!(lengths, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    #[test]
    fn slow_failures_never_ban_and_bans_can_be_lifted() {
        let m = Memory::default();
        let p = bans();
        let mut now = 0;
        for _ in 0..50 {
            assert_eq!(m.failure("addr:a", &p, now), None);
            now += 7_000_000; // 9 per 63 s: never 10 within one window
        }
        for _ in 0..10 {
            m.failure("addr:b", &p, now);
        }
        assert_eq!(m.bans(now).len(), 1);
        assert!(m.lift("addr:b", now));
        assert_eq!(m.banned("addr:b", now), None);
        assert!(!m.lift("addr:b", now));
    }

    #[test]
    fn quotas_take_all_windows_or_none() {
        let m = Memory::default();
        let w = |key: &str, limit| QuotaWindow {
            key: key.into(),
            limit,
            ends_us: 1_000,
            name: "day",
        };
        let windows = [w("d", 10), w("m", 15)];
        assert!(m.quota(&windows, 8, 0).allowed);
        let d = m.quota(&windows, 3, 0);
        assert_eq!((d.allowed, d.exceeded), (false, Some(0)));
        assert_eq!(m.quota_used(&windows, 0), [8, 8]);
        assert!(m.quota(&windows, 2, 0).allowed);
        assert_eq!(m.quota_used(&windows, 1_000), [0, 0], "windows end");
    }
}
