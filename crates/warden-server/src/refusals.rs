//! Cheap refusals are counted, not recorded one by one (docs/audit.md,
//! "Refusals"): a request refused before any work — no or a wrong
//! credential, a banned address, a rate limit — costs
//! the attacker nothing, so one audit record each would let a flood fill the
//! disk. They are tallied per (plane, client address, principal, outcome)
//! and written as one record per tally and window, with a count, inside the
//! HMAC chain like every other record.
//!
//! Memory is bounded: past [`MAX_TALLIES`] distinct tallies in a window,
//! further addresses are counted in one tally per (plane, outcome) with the
//! client `*`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::fair::AddressKey;
use crate::steps::{Plane, unix_micros};

/// Most distinct tallies kept in one window.
pub const MAX_TALLIES: usize = 10_000;

/// The outcomes counted rather than recorded one by one: refusals made
/// before any model work, which a client can repeat for free.
pub const COUNTED: [&str; 3] = ["unauthenticated", "banned", "rate_limited"];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    plane: Plane,
    /// `None`: the overflow tally.
    client: Option<AddressKey>,
    principal: Option<Arc<str>>,
    /// The model, for a rate limit counted in rows (after validation).
    model: Option<Arc<str>>,
    outcome: &'static str,
}

#[derive(Debug, Clone)]
struct Tally {
    client: Option<IpAddr>,
    route: String,
    count: u64,
    first_us: u64,
    last_us: u64,
}

/// The tallies of the current window.
#[derive(Debug, Default)]
pub struct Refusals {
    tallies: Mutex<HashMap<Key, Tally>>,
}

/// One refusal to count.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// The listener.
    pub plane: Plane,
    /// The client address.
    pub client: IpAddr,
    /// The principal, when known (rate limits).
    pub principal: Option<&'a Arc<str>>,
    /// The model, when the refusal came after the model was known (the
    /// `predict` rate limit in rows).
    pub model: Option<&'a Arc<str>>,
    /// The outcome code.
    pub outcome: &'static str,
    /// The request's path (the first one seen is kept).
    pub route: &'a str,
}

impl Refusals {
    /// Counts one refusal.
    pub fn add(&self, refusal: Refusal<'_>) {
        let now = unix_micros();
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = Key {
            plane: refusal.plane,
            client: Some(AddressKey::of(refusal.client)),
            principal: refusal.principal.cloned(),
            model: refusal.model.cloned(),
            outcome: refusal.outcome,
        };
        let mut client = Some(refusal.client);
        if !tallies.contains_key(&key) && tallies.len() >= MAX_TALLIES {
            key.client = None;
            key.principal = None;
            key.model = None;
            client = None;
        }
        let tally = tallies.entry(key).or_insert_with(|| Tally {
            client,
            route: refusal.route.to_owned(),
            count: 0,
            first_us: now,
            last_us: now,
        });
        tally.count += 1;
        tally.last_us = now;
    }

    /// Takes the window's tallies as audit records (canonical JSON).
    pub fn take_records(&self, window: Duration) -> Vec<String> {
        let tallies =
            std::mem::take(&mut *self.tallies.lock().unwrap_or_else(PoisonError::into_inner));
        let mut records: Vec<(u64, String)> = tallies
            .into_iter()
            .map(|(key, tally)| {
                let record = serde_json::json!({
                    "time_us": unix_micros(),
                    "event": "refusals",
                    "plane": crate::metrics::plane_label(key.plane),
                    "client": tally.client.map_or_else(|| "*".to_owned(), |c| c.to_string()),
                    "principal": key.principal.as_deref(),
                    "model": key.model.as_deref(),
                    "outcome": key.outcome,
                    "route": tally.route,
                    "count": tally.count,
                    "first_us": tally.first_us,
                    "last_us": tally.last_us,
                    "window_s": window.as_secs(),
                });
                (tally.first_us, record.to_string())
            })
            .collect();
        records.sort();
        records.into_iter().map(|(_, r)| r).collect()
    }

    /// Whether anything is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.tallies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// Whether a response with `outcome` is counted rather than recorded.
pub fn is_counted(outcome: &str) -> bool {
    COUNTED.contains(&outcome)
}

/// Writes the tallies to the audit trail every `window`, until the process ends.
pub fn spawn_flusher(refusals: Arc<Refusals>, log: Arc<warden_audit::AuditLog>, window: Duration) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(window);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            flush(&refusals, &log, window).await;
        }
    });
}

/// Hands the current tallies to the audit trail (also at shutdown), without
/// waiting for each commit: the writer batches them, and at shutdown the
/// trail's own flush waits for them.
pub async fn flush(refusals: &Refusals, log: &warden_audit::AuditLog, window: Duration) {
    for record in refusals.take_records(window) {
        if log.record_unacknowledged(record).await.is_err() {
            tracing::error!("refusal tally not handed to the audit trail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal<'a>(
        client: &str,
        outcome: &'static str,
        principal: Option<&'a Arc<str>>,
    ) -> Refusal<'a> {
        Refusal {
            plane: Plane::Data,
            client: client.parse().unwrap(),
            principal,
            model: None,
            outcome,
            route: "/v1/models/iris:predict",
        }
    }

    #[test]
    fn refusals_are_tallied_per_address_principal_and_outcome() {
        let r = Refusals::default();
        for _ in 0..1000 {
            r.add(refusal("10.0.0.1", "unauthenticated", None));
        }
        r.add(refusal("10.0.0.1", "banned", None));
        r.add(refusal("10.0.0.2", "unauthenticated", None));
        let alice: Arc<str> = "key:alice".into();
        r.add(refusal("10.0.0.1", "rate_limited", Some(&alice)));
        let records = r.take_records(Duration::from_secs(60));
        assert_eq!(records.len(), 4);
        let parsed: Vec<serde_json::Value> = records
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        let flood = parsed
            .iter()
            .find(|r| r["client"] == "10.0.0.1" && r["outcome"] == "unauthenticated")
            .unwrap();
        assert_eq!(flood["count"], 1000);
        assert_eq!(flood["event"], "refusals");
        assert!(parsed.iter().any(|r| r["principal"] == "key:alice"));
        assert!(r.is_empty());
    }

    #[test]
    fn memory_is_bounded_by_an_overflow_tally() {
        let r = Refusals::default();
        for i in 0..(MAX_TALLIES as u32 + 500) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            r.add(refusal(&ip, "unauthenticated", None));
        }
        let records = r.take_records(Duration::from_secs(60));
        assert_eq!(records.len(), MAX_TALLIES + 1);
        let overflow: serde_json::Value = records
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
            .find(|r| r["client"] == "*")
            .unwrap();
        assert_eq!(overflow["count"], 500);
    }
}
