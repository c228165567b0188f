//! The limiter with a controlled clock: no sleeping for timing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use warden_core::config::{Bans, LimitBackend, LimitSettings, Quota, Rate};
use warden_core::{ModelScope, Principal, Roles};

use super::*;

#[derive(Debug, Default)]
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ManualClock {
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }
}

fn rate(quota: u64, secs: u64, burst: u64) -> Rate {
    Rate {
        quota,
        window: Duration::from_secs(secs),
        burst,
    }
}

fn settings() -> LimitSettings {
    let mut rates = BTreeMap::new();
    rates.insert("predict".to_string(), rate(600, 60, 60));
    rates.insert("default".to_string(), rate(6000, 60, 600));
    let mut role_rates = BTreeMap::new();
    role_rates.insert(
        "analyst".to_string(),
        BTreeMap::from([("predict".to_string(), rate(1200, 60, 120))]),
    );
    let mut key_rates = BTreeMap::new();
    key_rates.insert(
        "special00001".to_string(),
        BTreeMap::from([("predict".to_string(), rate(10, 60, 2))]),
    );
    LimitSettings {
        backend: LimitBackend::Memory,
        rates,
        role_rates,
        key_rates,
        quotas: vec![Quota {
            role: "predict".into(),
            model: None,
            per_day: Some(100),
            per_month: Some(150),
        }],
        bans: Some(Bans {
            failures: 3,
            window: Duration::from_secs(60),
            base: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        }),
    }
}

fn principal(id: &str, role: &str) -> Principal {
    let mut roles = Roles::builtin();
    let _ = roles.define("analyst", String::new(), &["predict:*".into()]);
    Principal::with_role(id, roles.get(role).unwrap(), ModelScope::All)
}

fn limiter() -> (Limiter, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    // 2026-11-23T12:00:00Z
    clock.0.store(1_795_435_200_000_000, Ordering::SeqCst);
    (Limiter::in_memory(settings(), clock.clone()), clock)
}

#[test]
fn overrides_per_key_then_role_then_policy() {
    let (l, _) = limiter();
    assert_eq!(
        l.rate_for("predict", Some(&principal("key:special00001", "analyst"))),
        rate(10, 60, 2)
    );
    assert_eq!(
        l.rate_for("predict", Some(&principal("key:other", "analyst"))),
        rate(1200, 60, 120)
    );
    assert_eq!(
        l.rate_for("predict", Some(&principal("key:other", "predict"))),
        rate(600, 60, 60)
    );
    assert_eq!(l.rate_for("predict", None), rate(600, 60, 60));
}

#[tokio::test]
async fn rows_are_counted_and_headers_follow_the_draft() {
    let (l, clock) = limiter();
    let r = rate(600, 60, 60);
    let o = l.rate("predict", "key:a", r, 50).await;
    assert!(o.decision.allowed);
    assert_eq!(o.policy_header(), "\"predict\";q=600;w=60");
    assert_eq!(o.limit_header(), "\"predict\";r=10;t=5");
    let o = l.rate("predict", "key:a", r, 20).await;
    assert!(!o.decision.allowed);
    assert_eq!(o.retry_after(), 1);
    clock.advance(Duration::from_secs(1));
    assert!(l.rate("predict", "key:a", r, 20).await.decision.allowed);
}

#[tokio::test]
async fn quotas_refuse_until_the_window_resets() {
    let (l, clock) = limiter();
    let p = principal("key:q", "predict");
    let o = l.quota(&p, "iris", 60).await.unwrap();
    assert_eq!((o.allowed, o.remaining), (true, Some(40)));
    let o = l.quota(&p, "iris", 41).await.unwrap();
    assert!(!o.allowed);
    assert_eq!(o.retry_after, 12 * 3600, "until midnight UTC");
    assert!(
        l.quota(&p, "digits", 41).await.unwrap().allowed,
        "per model"
    );
    clock.advance(Duration::from_secs(12 * 3600));
    let o = l.quota(&p, "iris", 41).await.unwrap();
    assert_eq!(
        (o.allowed, o.remaining),
        (true, Some(49)),
        "a new day; the month has 49 left"
    );
    let o = l.quota(&p, "iris", 50).await.unwrap();
    assert!(!o.allowed, "the month's budget is spent");
    assert_eq!(o.retry_after, 7 * 86_400, "until 1 December");
    let usage = l.quota_usage(&p, &["iris".into()]).await.unwrap();
    assert_eq!(
        usage.iter().map(|u| (u.window, u.used)).collect::<Vec<_>>(),
        [("day", 41), ("month", 101)]
    );
    let analyst = principal("key:x", "analyst");
    assert_eq!(
        l.quota(&analyst, "iris", 10_000).await.unwrap().remaining,
        None,
        "no quota for the role"
    );
}

#[tokio::test]
async fn failures_ban_and_lifting_works() {
    let (l, clock) = limiter();
    for _ in 0..2 {
        assert_eq!(l.failure("addr:10.0.0.9").await, None);
    }
    assert_eq!(l.banned("addr:10.0.0.9").await, None);
    assert_eq!(l.failure("addr:10.0.0.9").await, Some(60));
    assert_eq!(l.banned("addr:10.0.0.9").await, Some(60));
    clock.advance(Duration::from_secs(30));
    assert_eq!(l.banned("addr:10.0.0.9").await, Some(30));
    assert_eq!(l.bans().await.unwrap().len(), 1);
    assert!(l.lift("addr:10.0.0.9").await.unwrap());
    assert_eq!(l.banned("addr:10.0.0.9").await, None);
}

#[test]
fn calendar_windows() {
    // 2026-12-31T23:00:00Z: the month ends in an hour, at 2027-01-01.
    let (day, day_ends, month, month_ends) = calendar(1_798_758_000_000_000);
    assert_eq!(month, "m202612");
    assert_eq!(month_ends, 1_798_761_600_000_000);
    assert_eq!(day_ends, month_ends);
    assert!(day.starts_with('d'));
}

#[tokio::test]
async fn one_charge_stops_at_the_first_refusal_and_takes_the_quota_last() {
    let (l, _) = limiter();
    let p = principal("key:c", "predict");
    let checks = |default_cost, predict_cost| {
        [
            RateCheck {
                policy: "default",
                subject: "key:c",
                rate: rate(60, 60, 2),
                cost: default_cost,
            },
            RateCheck {
                policy: "predict",
                subject: "key:c",
                rate: rate(600, 60, 60),
                cost: predict_cost,
            },
        ]
    };
    let quota = |rows| {
        Some(QuotaCharge {
            principal: &p,
            model: "iris",
            rows,
        })
    };
    // Both pass, the quota is taken.
    let c = l.charge(&checks(1, 40), quota(40)).await.unwrap();
    assert_eq!(c.rates.len(), 2);
    assert!(c.rates.iter().all(|o| o.decision.allowed));
    assert_eq!(c.quota.as_ref().map(|q| q.remaining), Some(Some(60)));
    // `predict` refuses (40 + 40 > 60): `default` stays charged, no quota.
    let c = l.charge(&checks(1, 40), quota(40)).await.unwrap();
    assert_eq!(c.rates.len(), 2);
    assert!(c.rates[0].decision.allowed && !c.rates[1].decision.allowed);
    assert_eq!(c.quota, None);
    // `default` (burst 2) is spent: nothing after it is charged.
    let c = l.charge(&checks(1, 1), quota(1)).await.unwrap();
    assert_eq!(c.rates.len(), 1);
    assert_eq!(c.rates[0].policy, "default");
    assert!(!c.rates[0].decision.allowed);
    assert_eq!(c.quota, None);
    assert_eq!(
        l.quota_usage(&p, &["iris".into()]).await.unwrap()[0].used,
        40,
        "only the first charge reached the quota"
    );
}

#[tokio::test]
async fn the_ban_check_is_skipped_only_while_no_ban_can_run() {
    let (l, clock) = limiter();
    assert!(!l.may_have_bans(), "nobody banned yet");
    for _ in 0..3 {
        l.failure("addr:10.0.0.7").await;
    }
    assert!(l.may_have_bans());
    assert_eq!(l.banned("addr:10.0.0.7").await, Some(60));
    clock.advance(Duration::from_secs(61));
    assert!(!l.may_have_bans(), "the only ban has ended");
    assert_eq!(l.banned("addr:10.0.0.7").await, None);
}

#[test]
fn the_mirror_of_shared_bans_follows_announcements_and_reloads() {
    let m = memory::Memory::default();
    let now = 1_000_000_000;
    assert!(!m.any_ban(now));
    // Announced by another replica: banned here at once, at its level.
    m.mirror_ban("addr:192.0.2.1", 60_000_000, 2, now);
    assert!(m.any_ban(now));
    assert_eq!(m.banned("addr:192.0.2.1", now + 1), Some(59_999_999));
    // A lift announced.
    assert!(m.lift("addr:192.0.2.1", now + 2));
    assert_eq!(m.banned("addr:192.0.2.1", now + 3), None);
    // After resubscribing: exactly the shared list (a ban lifted while the
    // subscription was down ends here too).
    m.mirror_ban("addr:192.0.2.2", 60_000_000, 1, now);
    m.replace_bans(
        &[BanInfo {
            subject: "addr:192.0.2.3".into(),
            remaining_us: 30_000_000,
            level: 1,
        }],
        now,
    );
    assert_eq!(m.banned("addr:192.0.2.2", now + 1), None);
    assert_eq!(m.banned("addr:192.0.2.3", now + 1), Some(29_999_999));
    assert_eq!(m.bans(now + 1).len(), 1);
}
