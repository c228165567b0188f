//! Stateful detection of query-based attacks by query similarity, after
//! Blacklight (Li et al., "Blacklight: Scalable Defense for Neural Networks
//! against Query-Based Black-Box Attacks", USENIX Security 2022).
//!
//! Query-based attacks (HopSkipJump, the Boundary attack, gradient
//! estimation) iterate: thousands of queries, each a small step from the
//! last. Natural traffic does not. Each row of the watched input gets a
//! probabilistic content fingerprint — its values quantized per element
//! (the element's bounds cut into `levels` steps), every window of `window`
//! consecutive quantized values hashed, the `top_k` largest hashes kept —
//! and a row whose fingerprint shares at least `threshold` hashes with a
//! stored earlier query is a match. The store is per model and holds every
//! principal's queries, so an attack spread over many keys is still one
//! attack (docs/defenses.md, "Query-based attacks: similarity").
//!
//! Exact repeats are not evidence: a stored query with the very same
//! values (a client retrying, or the same natural row sent by another
//! principal) never counts as a match. Attack queries differ from each
//! other in their raw values while sharing their quantized content.
//!
//! Hashing is written by hand (a polynomial rolling hash over the
//! quantized values, finished with the splitmix64 mixer) because the
//! fingerprints must be identical on every replica and across Warden
//! versions (they are shared through Redis), which a library's seeded or
//! unspecified hasher does not promise.
//!
//! Cost is bounded per query: a fingerprint is O(row length); a lookup
//! reads at most `CHAIN` postings of each of the query's `top_k -
//! threshold + 1` largest hashes, the only ones a query is indexed under
//! ([`candidate_hashes`] says why that finds every match), and verifies
//! each candidate by merging two sorted hash lists, stopping as soon as the
//! rest cannot reach `threshold`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::Action;

/// Postings read per candidate hash: the most recent stored queries indexed
/// under it (4 keeps a lookup to a few microseconds on natural traffic,
/// benches/similarity.rs).
/// Attack queries are recent by nature; a hash common to much natural
/// traffic does not make lookups slower.
pub const CHAIN: usize = 4;

/// How long a query stays in the shared (Redis) store, in milliseconds.
pub const SHARED_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// `[defenses.similarity]`
#[derive(Debug, Clone, PartialEq)]
pub struct SimilaritySettings {
    /// What a match does.
    pub action: Action,
    /// Quantization: each element's bounds cut into this many steps.
    pub levels: u32,
    /// Consecutive values per hashed window.
    pub window: usize,
    /// Hashes kept per fingerprint.
    pub top_k: usize,
    /// Shared hashes that make a match.
    pub threshold: usize,
    /// Stored queries per model (memory store).
    pub capacity: usize,
}

/// A row's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The largest window hashes, distinct, in descending order.
    pub hashes: Vec<u32>,
    /// A hash of the row's exact values (repeats are not matches).
    pub exact: u64,
}

/// The splitmix64 finalizer: spreads a hash's bits.
const fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Multiplier of the rolling hash (odd, so powers never vanish mod 2^64).
const BASE: u64 = 0x0000_0100_0000_01b3;

/// A stable 64-bit hash of a string (a principal's id), FNV-1a then mixed.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The fingerprint of one row; `bounds[i]` are element i's finite bounds
/// (a row longer than `bounds` reuses them cyclically).
pub fn fingerprint(
    settings: &SimilaritySettings,
    bounds: &[(f64, f64)],
    row: &[f32],
) -> Fingerprint {
    let levels = f64::from(settings.levels);
    let n_bounds = bounds.len().max(1);
    // Element i's step: its bounds cut into `levels`, rounded to the nearest
    // (values on a grid, such as integer pixels, sit at step centres rather
    // than edges). Validation has already refused NaN; the casts saturate.
    let quantize = |i: usize, v: f32| -> u64 {
        let (lo, hi) = bounds.get(i % n_bounds).copied().unwrap_or((0.0, 1.0));
        let x = (f64::from(v) - lo) / (hi - lo).max(f64::MIN_POSITIVE) * levels + 0.5;
        // floor(x) without a libm call.
        let t = x as i64;
        (if (t as f64) > x { t - 1 } else { t }) as u64
    };
    let mut exact: u64 = 0x243f_6a88_85a3_08d3;
    for &v in row {
        exact = mix(exact ^ u64::from(v.to_bits()));
    }
    let w = settings.window.clamp(1, row.len().max(1));
    let mut hashes: Vec<u32> = Vec::with_capacity(row.len());
    // Rolling: h = sum (q[i+j] + 1) * BASE^(w-1-j); the value leaving the
    // window is quantized again rather than kept.
    let top = (1..w).fold(1u64, |p, _| p.wrapping_mul(BASE));
    let mut h = 0u64;
    for (i, &v) in row.iter().enumerate() {
        if i >= w {
            let out = quantize(i - w, row[i - w]);
            h = h.wrapping_sub(out.wrapping_add(1).wrapping_mul(top));
        }
        h = h
            .wrapping_mul(BASE)
            .wrapping_add(quantize(i, v).wrapping_add(1));
        if i + 1 >= w {
            hashes.push((mix(h) >> 32) as u32);
        }
    }
    hashes.sort_unstable_by(|a, b| b.cmp(a));
    hashes.dedup();
    hashes.truncate(settings.top_k);
    Fingerprint { hashes, exact }
}

/// The `top_k - threshold + 1` largest hashes: a query looks candidates up
/// by these, and a stored query is indexed under these only. Any two
/// fingerprints that share `threshold` hashes share one of them: at most
/// `top_k - threshold` of the query's hashes are unshared, so one of its
/// first `top_k - threshold + 1` is shared; take the largest shared one —
/// every larger hash of the stored query is unshared, so it too is within
/// the stored query's first `top_k - threshold + 1`. (A fingerprint with
/// fewer than `threshold` hashes can match nothing and is not indexed.)
pub fn candidate_hashes<'a>(settings: &SimilaritySettings, fp: &'a Fingerprint) -> &'a [u32] {
    if fp.hashes.len() < settings.threshold {
        return &[];
    }
    &fp.hashes[..fp.hashes.len() - settings.threshold + 1]
}

/// Whether two descending lists share at least `t` hashes (the merge stops
/// as soon as the rest cannot make up the difference: most candidates
/// share few hashes and are dismissed after a handful of steps).
fn shares(a: &[u32], b: &[u32], t: usize) -> bool {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        if n >= t {
            return true;
        }
        if n + (a.len() - i).min(b.len() - j) < t {
            return false;
        }
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Greater => i += 1,
            std::cmp::Ordering::Less => j += 1,
        }
    }
    n >= t
}

/// A match: the stored query this one resembles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Whether the stored query came from the same principal.
    pub same_principal: bool,
}

/// One half of the memory store (see [`Store`]).
#[derive(Debug, Default)]
struct Generation {
    /// Hash → its newest posting.
    heads: HashMap<u32, u32>,
    /// (entry, previous posting of the same hash or `u32::MAX`).
    postings: Vec<(u32, u32)>,
    /// Per entry: exact hash, principal hash, end of its hashes in `hashes`.
    entries: Vec<(u64, u64, u32)>,
    /// Every entry's hashes, descending, back to back.
    hashes: Vec<u32>,
}

impl Generation {
    fn entry_hashes(&self, e: usize) -> &[u32] {
        let start = if e == 0 {
            0
        } else {
            self.entries[e - 1].2 as usize
        };
        &self.hashes[start..self.entries[e].2 as usize]
    }

    fn find(&self, settings: &SimilaritySettings, fp: &Fingerprint) -> Option<(u64, u64)> {
        for h in candidate_hashes(settings, fp) {
            let mut at = self.heads.get(h).copied().unwrap_or(u32::MAX);
            let mut read = 0;
            while at != u32::MAX && read < CHAIN {
                let (entry, previous) = self.postings[at as usize];
                at = previous;
                read += 1;
                // A candidate met in several lists is checked again: the
                // check is cheaper than remembering it.
                let (exact, principal, _) = self.entries[entry as usize];
                if exact != fp.exact
                    && shares(
                        &fp.hashes,
                        self.entry_hashes(entry as usize),
                        settings.threshold,
                    )
                {
                    return Some((exact, principal));
                }
            }
        }
        None
    }

    fn insert(&mut self, settings: &SimilaritySettings, fp: &Fingerprint, principal: u64) {
        let entry = self.entries.len() as u32;
        self.hashes.extend_from_slice(&fp.hashes);
        self.entries
            .push((fp.exact, principal, self.hashes.len() as u32));
        // Indexed under its candidate hashes only (see `candidate_hashes`).
        for &h in candidate_hashes(settings, fp) {
            let posting = self.postings.len() as u32;
            let previous = self.heads.insert(h, posting).unwrap_or(u32::MAX);
            self.postings.push((entry, previous));
        }
    }

    fn bytes(&self) -> usize {
        // hashbrown: key + value + one control byte per bucket.
        self.heads.capacity() * (4 + 4 + 1)
            + self.postings.capacity() * 8
            + self.entries.capacity() * 24
            + self.hashes.capacity() * 4
    }
}

#[derive(Debug, Default)]
struct Inner {
    current: Generation,
    previous: Generation,
    /// Principals (hashes) already alerted on in these generations.
    alerted: HashSet<u64>,
}

/// The in-memory store of a model's query fingerprints.
///
/// Memory is bounded by `capacity` queries, kept as two generations of
/// `capacity / 2`: when the current one is full, the previous one is
/// dropped whole and the current one takes its place. So the store always
/// holds the latest `capacity / 2` to `capacity` queries, and eviction costs
/// nothing per query.
#[derive(Debug)]
pub struct Store {
    settings: SimilaritySettings,
    inner: Mutex<Inner>,
}

/// The outcome of looking a row up and storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The match, if the row resembles a stored query.
    pub matched: Option<Match>,
    /// Whether this is the principal's first match since it was last
    /// alerted on (the caller raises the alert).
    pub first_for_principal: bool,
}

impl Store {
    /// An empty store.
    pub fn new(settings: SimilaritySettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The settings the store was built for.
    pub const fn settings(&self) -> &SimilaritySettings {
        &self.settings
    }

    /// Looks `fp` up among the stored queries, then stores it as
    /// `principal`'s (a hash from [`hash_str`]).
    pub fn observe(&self, fp: &Fingerprint, principal: u64) -> Seen {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = inner
            .current
            .find(&self.settings, fp)
            .or_else(|| inner.previous.find(&self.settings, fp));
        let half = (self.settings.capacity / 2).max(1);
        if inner.current.entries.len() >= half {
            inner.previous = std::mem::take(&mut inner.current);
            inner.alerted.clear();
        }
        inner.current.insert(&self.settings, fp, principal);
        let matched = found.map(|(_, p)| Match {
            same_principal: p == principal,
        });
        let first_for_principal = matched.is_some() && inner.alerted.insert(principal);
        Seen {
            matched,
            first_for_principal,
        }
    }

    /// Records a match found elsewhere (the shared store) for `principal`:
    /// true if it is the principal's first since the store last turned a
    /// generation (the caller raises the alert once, not per query).
    pub fn note_match(&self, principal: u64) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .alerted
            .insert(principal)
    }

    /// Queries held now.
    pub fn len(&self) -> usize {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.current.entries.len() + inner.previous.entries.len()
    }

    /// Whether the store holds no query.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held (an estimate from the containers' capacities).
    pub fn bytes(&self) -> usize {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.current.bytes() + inner.previous.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn settings() -> SimilaritySettings {
        SimilaritySettings {
            action: Action::Reject,
            levels: 4,
            window: 8,
            top_k: 30,
            threshold: 25,
            capacity: 1000,
        }
    }

    const BOUNDS: [(f64, f64); 1] = [(0.0, 16.0)];

    fn digit(rng: &mut rand::rngs::StdRng) -> Vec<f32> {
        (0..64)
            .map(|_| f32::from(rng.random_range(0u8..=16)))
            .collect()
    }

    #[test]
    fn fingerprints_are_stable_and_bounded() {
        let s = settings();
        let row: Vec<f32> = (0..64).map(|i| (i % 17) as f32).collect();
        let a = fingerprint(&s, &BOUNDS, &row);
        assert_eq!(a, fingerprint(&s, &BOUNDS, &row));
        assert!(a.hashes.len() <= 30 && a.hashes.windows(2).all(|w| w[0] > w[1]));
        // Pinned: replicas and versions must agree on fingerprints.
        assert_eq!(
            (a.hashes[0], a.hashes.len(), a.exact),
            (4_027_920_187, 17, 9_213_976_483_906_611_685)
        );
        assert_eq!(hash_str("key:abc"), hash_str("key:abc"));
        assert_ne!(hash_str("key:abc"), hash_str("key:abd"));
    }

    #[test]
    fn small_steps_match_and_distinct_rows_do_not() {
        let s = settings();
        let store = Store::new(s.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let x = digit(&mut rng);
        assert_eq!(
            store.observe(&fingerprint(&s, &BOUNDS, &x), 1).matched,
            None
        );
        // A step of a tenth of a grey level on a few pixels: same content.
        let mut y = x.clone();
        for v in y.iter_mut().step_by(9) {
            *v += 0.1;
        }
        let seen = store.observe(&fingerprint(&s, &BOUNDS, &y), 2);
        assert_eq!(
            seen.matched,
            Some(Match {
                same_principal: false
            })
        );
        assert!(seen.first_for_principal);
        // Random distinct rows never match each other.
        for p in 0..200 {
            let r = digit(&mut rng);
            assert_eq!(
                store.observe(&fingerprint(&s, &BOUNDS, &r), 10 + p).matched,
                None
            );
        }
    }

    #[test]
    fn exact_repeats_are_not_matches() {
        let s = settings();
        let store = Store::new(s.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let x = fingerprint(&s, &BOUNDS, &digit(&mut rng));
        for p in 0..50 {
            assert_eq!(store.observe(&x, p % 3).matched, None, "repeat {p}");
        }
    }

    #[test]
    fn memory_stays_within_capacity() {
        let s = SimilaritySettings {
            capacity: 100,
            ..settings()
        };
        let store = Store::new(s.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for p in 0..1000 {
            store.observe(&fingerprint(&s, &BOUNDS, &digit(&mut rng)), p);
            assert!(store.len() <= 100);
        }
        assert!(store.len() >= 50);
        // A matching query from before the last two generations is gone.
        let old = digit(&mut rng);
        store.observe(&fingerprint(&s, &BOUNDS, &old), 1);
        for p in 0..200 {
            store.observe(&fingerprint(&s, &BOUNDS, &digit(&mut rng)), p);
        }
        let mut near = old.clone();
        near[0] += 0.1;
        assert_eq!(
            store.observe(&fingerprint(&s, &BOUNDS, &near), 2).matched,
            None
        );
    }
}
