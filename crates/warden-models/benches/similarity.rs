//! Query similarity's cost (docs/defenses.md, "Query-based attacks:
//! similarity"): CPU per query (fingerprint, lookup, store) and memory per
//! 100,000 stored queries, on digits-shaped rows (64 values in 0..=16), both
//! for distinct rows (natural traffic: every query stored, few matches) and
//! for an attack-like walk (every query matches).
//!
//!     cargo bench -p warden-models --bench similarity
//!
//! Prints one JSON object.

#![allow(clippy::print_stdout, reason = "a benchmark tool")]

use std::time::Instant;

use rand::{Rng, SeedableRng};
use warden_models::defenses::Action;
use warden_models::defenses::similarity::{SimilaritySettings, Store, fingerprint};

fn main() {
    let settings = SimilaritySettings {
        action: Action::Reject,
        levels: 4,
        window: 8,
        top_k: 30,
        threshold: 25,
        // Room for every query of the run: the figure is per 100k stored.
        capacity: 200_000,
    };
    let bounds = [(0.0, 16.0)];
    let n = 100_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Natural-like: random digit-shaped rows (zero borders, strokes inside).
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|_| {
            (0..64)
                .map(|i| {
                    let (r, c) = (i / 8, i % 8);
                    if r == 0 || r == 7 || c == 0 || c == 7 {
                        f32::from(rng.random_range(0u8..=2))
                    } else {
                        f32::from(rng.random_range(0u8..=16))
                    }
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let fps: Vec<_> = rows
        .iter()
        .map(|r| fingerprint(&settings, &bounds, r))
        .collect();
    let fingerprint_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    drop(fps);
    let store = Store::new(settings.clone());
    let start = Instant::now();
    let mut matched = 0;
    for (i, row) in rows.iter().enumerate() {
        let fp = fingerprint(&settings, &bounds, row);
        matched += usize::from(store.observe(&fp, i as u64 % 20).matched.is_some());
    }
    let natural_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let bytes = store.bytes();
    // Attack-like: a walk of small steps from one row.
    let attack = Store::new(settings.clone());
    let mut x = rows[0].clone();
    let walk = 20_000;
    let start = Instant::now();
    let mut attack_matched = 0;
    for i in 0..walk {
        let j = rng.random_range(0..64);
        x[j] = (x[j] + rng.random_range(-0.05f32..0.05)).clamp(0.0, 16.0);
        let fp = fingerprint(&settings, &bounds, &x);
        attack_matched += usize::from(attack.observe(&fp, i as u64 % 10).matched.is_some());
    }
    let attack_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(walk);
    println!(
        "{{\"fingerprint_us\": {fingerprint_us:.2}, \"natural_us_per_query\": {natural_us:.2}, \"natural_matched\": {matched}, \"stored\": {}, \"mib_per_100k_stored\": {:.1}, \"attack_us_per_query\": {attack_us:.2}, \"attack_matched_share\": {:.4}}}",
        store.len(),
        bytes as f64 / (1 << 20) as f64 * 100_000.0 / store.len() as f64,
        attack_matched as f64 / f64::from(walk)
    );
}
