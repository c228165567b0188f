//! The generic cell rate algorithm, as pure arithmetic on microseconds.
//!
//! Written by hand rather than taken from `governor` because the same rule
//! must run in two places with identical results: here for the in-memory
//! backend, and as a Lua script inside Redis for replicas (`redis.rs` holds
//! the same arithmetic). Taking `now` as an argument makes it testable with
//! a controlled clock, and `cost` lets one request take several units (rows).
//!
//! A rate of `quota` units per `window` with `burst` is an emission
//! interval `T = window / quota` and a tolerance `tau = T * burst`: a
//! subject's "theoretical arrival time" `tat` advances by `T` per unit, and
//! a request is allowed while `tat - now` stays within `tau`.

use warden_core::config::Rate;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed (and its units were taken).
    pub allowed: bool,
    /// Units still available right now.
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
    /// If refused: microseconds until the request would be allowed.
    pub retry_after_us: u64,
}

/// Emission interval and tolerance of a rate, in microseconds.
pub fn params(rate: &Rate) -> (u64, u64) {
    let t = (rate.window.as_micros() as u64 / rate.quota).max(1);
    (t, t.saturating_mul(rate.burst))
}

/// One GCRA step: the stored `tat` (if any) at `now`, taking `cost` units.
/// Returns the decision and, if allowed, the new `tat` to store.
pub fn step(tat: Option<u64>, now: u64, cost: u64, rate: &Rate) -> (Decision, Option<u64>) {
    let (t, tau) = params(rate);
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(cost.saturating_mul(t));
    let ahead = new_tat - now;
    if ahead > tau {
        let remaining = tau.saturating_sub(tat - now) / t;
        (
            Decision {
                allowed: false,
                remaining,
                reset_us: tat - now,
                retry_after_us: ahead - tau,
            },
            None,
        )
    } else {
        (
            Decision {
                allowed: true,
                remaining: (tau - ahead) / t,
                reset_us: ahead,
                retry_after_us: 0,
            },
            Some(new_tat),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rate(quota: u64, secs: u64, burst: u64) -> Rate {
        Rate {
            quota,
            window: Duration::from_secs(secs),
            burst,
        }
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate() {
        let r = rate(60, 60, 10); // one per second, ten at once
        let mut tat = None;
        let now = 1_000_000_000;
        for i in 0..10 {
            let (d, t) = step(tat, now, 1, &r);
            assert!(d.allowed, "unit {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = t;
        }
        let (d, _) = step(tat, now, 1, &r);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, 1_000_000);
        // One second later one more unit is free.
        let (d, t) = step(tat, now + 1_000_000, 1, &r);
        assert!(d.allowed && d.remaining == 0);
        tat = t;
        // After ten idle seconds the bucket is full again.
        let (d, _) = step(tat, now + 11_000_000, 1, &r);
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn costs_count_rows_and_a_batch_cannot_exceed_the_burst() {
        let r = rate(600, 60, 60);
        let now = 5_000_000;
        let (d, tat) = step(None, now, 50, &r);
        assert!(d.allowed && d.remaining == 10);
        let (d, _) = step(tat, now, 11, &r);
        assert!(!d.allowed, "11 rows with 10 left");
        assert_eq!(d.remaining, 10);
        let (d, _) = step(None, now, 61, &r);
        assert!(
            !d.allowed,
            "a batch bigger than the burst never passes at once"
        );
    }
}
