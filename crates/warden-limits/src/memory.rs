//! In-process state: the single-node default, and the local fallback of the
//! Redis backend. Every map holds at most [`MAX_ENTRIES`]: when a new subject
//! finds its map full, expired entries are swept (at most once a second, so a
//! flood cannot make every request scan the map); if the map is still full
//! of live entries, the new subject is refused a rate cell or a quota window
//! (fail closed), its failures are not counted, and a ban first displaces
//! remembered ban levels, else is not recorded (and logged).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// The latest end of any ban recorded (µs): past it nobody is banned,
    /// and the ban check needs neither the subject's name nor the lock.
    ban_horizon: AtomicU64,
    last_sweep: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Memory {
    /// Whether a sweep of a full map may run now (at most once a second).
    fn may_sweep(&self, now: u64) -> bool {
        let last = self.last_sweep.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1_000_000
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// One GCRA check at `now`.
    pub fn rate(&self, key: &str, cost: u64, rate: &Rate, now: u64) -> Decision {
        let mut tats = lock(&self.tats);
        if tats.len() >= MAX_ENTRIES && !tats.contains_key(key) {
            if self.may_sweep(now) {
                tats.retain(|_, tat| *tat > now);
            }
            if tats.len() >= MAX_ENTRIES {
                // Full of live cells: a new subject is refused, not waved through.
                return Decision {
                    allowed: false,
                    remaining: 0,
                    reset_us: 1_000_000,
                    retry_after_us: 1_000_000,
                };
            }
        }
        let (decision, new_tat) = gcra::step(tats.get(key).copied(), now, cost, rate);
        if let Some(t) = new_tat {
            tats.insert(key.to_owned(), t);
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
        let new_keys = windows
            .iter()
            .filter(|w| !quotas.contains_key(&w.key))
            .count();
        if quotas.len() + new_keys > MAX_ENTRIES {
            if self.may_sweep(now) {
                quotas.retain(|_, (_, expires)| *expires > now);
            }
            if quotas.len() + new_keys > MAX_ENTRIES {
                return QuotaDecision {
                    allowed: false,
                    used: vec![0; windows.len()],
                    exceeded: Some(0),
                };
            }
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

    /// Gives `cost` rows back to every window.
    pub fn quota_refund(&self, windows: &[QuotaWindow], cost: u64, now: u64) {
        let mut quotas = lock(&self.quotas);
        for w in windows {
            if let Some((used, expires)) = quotas.get_mut(&w.key)
                && *expires > now
            {
                *used = used.saturating_sub(cost);
            }
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

    /// Whether any ban may still run at `now` (false: none does).
    pub fn any_ban(&self, now: u64) -> bool {
        now < self.ban_horizon.load(Ordering::Acquire)
    }

    /// Microseconds left on `subject`'s ban, if banned.
    pub fn banned(&self, subject: &str, now: u64) -> Option<u64> {
        if !self.any_ban(now) {
            return None;
        }
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
                if self.may_sweep(now) {
                    failures.retain(|_, (_, ends)| *ends > now);
                }
                if failures.len() >= MAX_ENTRIES {
                    return None;
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
        if bans.len() >= MAX_ENTRIES && !bans.contains_key(subject) {
            bans.retain(|_, b| b.until > now || b.level_expires > now);
            if bans.len() >= MAX_ENTRIES {
                // Forget remembered levels before refusing a new ban.
                bans.retain(|_, b| b.until > now);
            }
            if bans.len() >= MAX_ENTRIES {
                tracing::error!(subject, "ban table full: this ban is not recorded");
                return None;
            }
        }
        let state = bans.entry(subject.to_owned()).or_default();
        if state.level_expires <= now {
            state.level = 0;
        }
        state.level = state.level.saturating_add(1);
        let length = ban_length(policy, state.level);
        state.until = now + length;
        self.ban_horizon.fetch_max(state.until, Ordering::AcqRel);
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

    /// Records a ban another replica made (announced through the shared
    /// store): `subject` is banned for `remaining_us` more, at `level`.
    pub fn mirror_ban(&self, subject: &str, remaining_us: u64, level: u32, now: u64) {
        let mut bans = lock(&self.bans);
        if let Some(until) = mirror_into(&mut bans, subject, remaining_us, level, now) {
            self.ban_horizon.fetch_max(until, Ordering::AcqRel);
        }
    }

    /// Makes the current bans exactly `current` (the shared store's list,
    /// read after subscribing to its announcements): every other ban ends
    /// now; remembered levels stay, for the local fallback.
    pub fn replace_bans(&self, current: &[BanInfo], now: u64) {
        let mut bans = lock(&self.bans);
        for b in bans.values_mut() {
            b.until = 0;
        }
        bans.retain(|_, b| b.level_expires > now);
        for b in current {
            if let Some(until) = mirror_into(&mut bans, &b.subject, b.remaining_us, b.level, now) {
                self.ban_horizon.fetch_max(until, Ordering::AcqRel);
            }
        }
    }

    /// Lifts a ban (and forgets its level and failures). False if none.
    pub fn lift(&self, subject: &str, now: u64) -> bool {
        lock(&self.failures).remove(subject);
        lock(&self.bans)
            .remove(subject)
            .is_some_and(|b| b.until > now)
    }
}

/// Records a ban in `bans`; its end, unless the table is full.
fn mirror_into(
    bans: &mut HashMap<String, BanState>,
    subject: &str,
    remaining_us: u64,
    level: u32,
    now: u64,
) -> Option<u64> {
    if bans.len() >= MAX_ENTRIES && !bans.contains_key(subject) {
        bans.retain(|_, b| b.until > now);
        if bans.len() >= MAX_ENTRIES {
            tracing::error!(subject, "ban table full: this ban is not mirrored");
            return None;
        }
    }
    let state = bans.entry(subject.to_owned()).or_default();
    state.until = now.saturating_add(remaining_us);
    state.level = level;
    state.level_expires = state.until.saturating_add(LEVEL_MEMORY_US);
    Some(state.until)
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
    use warden_core::config::Rate;

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
    fn a_full_table_refuses_new_subjects_instead_of_growing() {
        let m = Memory::default();
        let r = Rate {
            quota: 1,
            window: Duration::from_secs(3600),
            burst: 10,
        };
        for i in 0..MAX_ENTRIES {
            assert!(m.rate(&format!("token:addr:{i}"), 1, &r, 0).allowed);
        }
        let d = m.rate("token:addr:new", 1, &r, 0);
        assert!(!d.allowed, "full of live cells: a new subject is refused");
        assert!(
            m.rate("token:addr:7", 1, &r, 0).allowed,
            "known subjects go on"
        );
        // Once the cells have expired, a sweep makes room again.
        assert!(m.rate("token:addr:new", 1, &r, 7_200_000_000).allowed);
        assert_eq!(lock(&m.tats).len(), 1);
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
