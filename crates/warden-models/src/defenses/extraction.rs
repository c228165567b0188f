//! Model-extraction monitor: PRADA (Juuti, Szyller, Marchal and Asokan,
//! EuroS&P 2019). Per principal and model, each query (standardized with
//! the card's training mean and std, unless the card says `standardize =
//! false`) is compared with a growing set of the
//! principal's earlier queries of the same predicted class: its minimum L2
//! distance to that set joins the pooled distances, and the query joins the
//! set when that distance exceeds the set's threshold (mean minus standard
//! deviation of the distances that grew it). Benign queries give roughly
//! normally distributed distances; synthetic attack queries do not. Every
//! `every` queries, once `min_queries` distances are in (repeats of a query
//! already stored are not counted), the Shapiro–Wilk W
//! of the latest distances is computed; W < `delta` flags the principal
//! (until a later test clears it).
//!
//! Memory is bounded: at most `max_points` stored queries per principal and
//! model (the oldest of the largest class goes first), the latest
//! [`MAX_DISTANCES`] distances, and [`MAX_PRINCIPALS`] principals per model
//! (the least recently seen is evicted). State is per replica: a principal
//! spread over replicas is tested on each replica's share of its queries
//! (docs/defenses.md).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use super::{ExtractionSettings, shapiro::shapiro_wilk_w, standardize};
use crate::card::InputSpec;

/// Principals with state, per model.
pub const MAX_PRINCIPALS: usize = 256;
/// Distances kept per principal (the window W is computed on).
pub const MAX_DISTANCES: usize = 5000;

/// The monitor of one model.
#[derive(Debug)]
pub struct Monitor {
    settings: ExtractionSettings,
    states: Mutex<States>,
}

#[derive(Debug, Default)]
struct States {
    by_principal: HashMap<Arc<str>, State>,
    clock: u64,
}

#[derive(Debug, Default)]
struct State {
    classes: Vec<ClassSet>,
    points: usize,
    distances: VecDeque<f64>,
    since_test: usize,
    /// W of the last test that flagged, while flagged.
    flagged: Option<f64>,
    last_seen: u64,
}

#[derive(Debug, Default)]
struct ClassSet {
    points: VecDeque<Vec<f32>>,
    grown: usize,
    sum: f64,
    sum_sq: f64,
    /// T_c: only ever raised (PRADA's max(T_c, mean - std)).
    threshold: f64,
}

/// A principal's state after a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// W of the last test, if flagged.
    pub flagged: Option<f64>,
    /// Whether this query's test turned the flag on.
    pub newly: bool,
}

impl Monitor {
    /// A monitor with no state.
    pub fn new(settings: ExtractionSettings) -> Self {
        Self {
            settings,
            states: Mutex::new(States::default()),
        }
    }

    /// Whether `principal` is flagged now (before its next query). Counts
    /// as being seen, so a rejected principal keeps its state.
    pub fn is_flagged(&self, principal: &str) -> bool {
        let mut guard = self.lock();
        let states = &mut *guard;
        states.clock += 1;
        match states.by_principal.get_mut(principal) {
            Some(s) => {
                s.last_seen = states.clock;
                s.flagged.is_some()
            }
            None => false,
        }
    }

    /// Principals with state.
    pub fn tracked(&self) -> usize {
        self.lock().by_principal.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, States> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `rows` queries (row-major `values`) with their predicted
    /// classes, and tests when due.
    pub fn observe(
        &self,
        input: &InputSpec,
        classes: usize,
        principal: &Arc<str>,
        values: &[f32],
        labels: &[usize],
    ) -> Verdict {
        let width = input.fixed_row_len().unwrap_or(values.len()).max(1);
        let s = &self.settings;
        let mut guard = self.lock();
        let states = &mut *guard;
        states.clock += 1;
        if !states.by_principal.contains_key(principal)
            && states.by_principal.len() >= MAX_PRINCIPALS
            && let Some(oldest) = states
                .by_principal
                .iter()
                // The least recently seen, unflagged principals first.
                .min_by_key(|(_, st)| (st.flagged.is_some(), st.last_seen))
                .map(|(k, _)| Arc::clone(k))
        {
            states.by_principal.remove(&oldest);
        }
        let state = states
            .by_principal
            .entry(Arc::clone(principal))
            .or_default();
        state.last_seen = states.clock;
        if state.classes.len() < classes.max(1) {
            state.classes.resize_with(classes.max(1), ClassSet::default);
        }
        let mut newly = false;
        for (row, &label) in values.chunks(width).zip(labels) {
            let x: Vec<f32> = if s.standardize {
                row.iter()
                    .enumerate()
                    .map(|(i, &v)| standardize(input, i, v) as f32)
                    .collect()
            } else {
                row.to_vec()
            };
            let Some(set) = state.classes.get_mut(label) else {
                continue;
            };
            if let Some(d) = set.min_distance(&x) {
                // A query identical to one already seen tells nothing new
                // (and replayed traffic would otherwise pile up zeros).
                if d < 1e-9 || !d.is_finite() {
                    continue;
                }
                state.distances.push_back(d);
                if state.distances.len() > MAX_DISTANCES {
                    state.distances.pop_front();
                }
                if d > set.threshold() {
                    set.grow(x, d);
                    state.points += 1;
                }
            } else {
                set.points.push_back(x);
                state.points += 1;
            }
            while state.points > s.max_points {
                let largest = state
                    .classes
                    .iter_mut()
                    .max_by_key(|c| c.points.len())
                    .and_then(|c| c.points.pop_front());
                if largest.is_none() {
                    break;
                }
                state.points -= 1;
            }
            state.since_test += 1;
        }
        // At most one test per call, however many rows it carried.
        if state.distances.len() >= s.min_queries && state.since_test >= s.every {
            state.since_test = 0;
            let was = state.flagged.is_some();
            state.flagged = match shapiro_wilk_w(&without_outliers(&state.distances)) {
                Some(w) if w < s.delta => Some(w),
                Some(_) => None,
                // Identical distances (a constant-step walk) are no natural
                // traffic: W counts as 0.
                None => Some(0.0),
            };
            newly = !was && state.flagged.is_some();
        }
        Verdict {
            flagged: state.flagged,
            newly,
        }
    }
}

/// The distances within three standard deviations of their mean (PRADA
/// drops outliers before the test).
fn without_outliers(d: &VecDeque<f64>) -> Vec<f64> {
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let sd = (d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    d.iter()
        .copied()
        .filter(|v| (v - mean).abs() <= 3.0 * sd)
        .collect()
}

impl ClassSet {
    fn min_distance(&self, x: &[f32]) -> Option<f64> {
        self.points
            .iter()
            .map(|p| {
                p.iter()
                    .zip(x)
                    .map(|(a, b)| {
                        let d = f64::from(*a) - f64::from(*b);
                        d * d
                    })
                    .sum::<f64>()
            })
            .min_by(f64::total_cmp)
            .map(f64::sqrt)
    }

    /// T_c: the largest mean minus standard deviation of the distances that
    /// grew the set so far.
    fn threshold(&self) -> f64 {
        self.threshold
    }

    fn grow(&mut self, x: Vec<f32>, d: f64) {
        self.points.push_back(x);
        self.grown += 1;
        self.sum += d;
        self.sum_sq += d * d;
        if self.grown >= 2 {
            let n = self.grown as f64;
            let mean = self.sum / n;
            let var = (self.sum_sq / n - mean * mean).max(0.0);
            self.threshold = self.threshold.max(mean - var.sqrt());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defenses::Action;

    fn card() -> crate::ModelCard {
        let features: String = (0..2)
            .map(|i| format!("[[input.features]]\nname = \"f{i}\"\nmin = -10.0\nmax = 10.0\nmean = 0.0\nstd = 1.0\n"))
            .collect();
        crate::ModelCard::parse(
            &format!("[input]\nname = \"input\"\n{features}[output]\nlabel = \"l\"\nclasses = [\"a\", \"b\"]\n"),
            crate::card::CardDefaults {
                max_batch: 8,
                range_tolerance: 0.0,
            },
        )
        .unwrap()
    }

    fn settings() -> ExtractionSettings {
        ExtractionSettings {
            action: Action::Flag,
            delta: 0.9,
            min_queries: 100,
            every: 10,
            max_points: 300,
            standardize: true,
        }
    }

    /// A deterministic generator (no test depends on a seed's luck).
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn natural_queries_pass_and_a_probing_walk_is_flagged() {
        let c = card();
        let m = Monitor::new(settings());
        let benign: Arc<str> = "key:benign".into();
        let mut seed = 7;
        // Benign: points from two Gaussian clusters (Box-Muller), labelled by cluster.
        for _ in 0..600 {
            let (u, v) = (lcg(&mut seed).max(1e-12), lcg(&mut seed));
            let r = (-2.0 * u.ln()).sqrt();
            let class = usize::from(lcg(&mut seed) < 0.5);
            let centre = if class == 0 { -3.0 } else { 3.0 };
            let x = [
                (centre + r * (std::f64::consts::TAU * v).cos()) as f32,
                (r * (std::f64::consts::TAU * v).sin()) as f32,
            ];
            let verdict = m.observe(&c.inputs[0], c.classes().len(), &benign, &x, &[class]);
            assert_eq!(verdict.flagged, None, "benign traffic flagged");
        }
        // Attack: a Papernot-style walk, each query a small step from the last.
        let attacker: Arc<str> = "key:attacker".into();
        let mut x = [0.0f32, 0.0];
        let mut flagged_at = None;
        for q in 0..600 {
            x[0] += 0.01 * (lcg(&mut seed) as f32 - 0.5);
            x[1] += 0.01;
            let verdict = m.observe(
                &c.inputs[0],
                c.classes().len(),
                &attacker,
                &x,
                &[usize::from(x[0] > 0.0)],
            );
            if verdict.newly {
                flagged_at = Some(q);
                break;
            }
        }
        assert!(flagged_at.is_some_and(|q| q < 300), "{flagged_at:?}");
        assert!(m.is_flagged("key:attacker") && !m.is_flagged("key:benign"));
    }

    #[test]
    fn memory_is_bounded() {
        let c = card();
        let m = Monitor::new(settings());
        let mut seed = 3;
        for p in 0..(MAX_PRINCIPALS + 20) {
            let id: Arc<str> = format!("key:{p}").into();
            for _ in 0..400 {
                let x = [lcg(&mut seed) as f32 * 10.0, lcg(&mut seed) as f32 * 10.0];
                m.observe(&c.inputs[0], c.classes().len(), &id, &x, &[0]);
            }
        }
        assert!(m.tracked() <= MAX_PRINCIPALS);
        let states = m.lock();
        for s in states.by_principal.values() {
            assert!(s.points <= 300);
            assert!(s.classes.iter().map(|c| c.points.len()).sum::<usize>() <= 300);
            assert!(s.distances.len() <= MAX_DISTANCES);
        }
    }

    #[test]
    fn a_constant_step_walk_cannot_blind_the_test() {
        // Every distance exactly 1: W is undefined, which counts as 0.
        let c = card();
        let m = Monitor::new(settings());
        let walker: Arc<str> = "key:walker".into();
        let mut flagged = false;
        for q in 0..200 {
            let x = [-9.0 + q as f32 * 0.05, 0.0];
            flagged |= m
                .observe(&c.inputs[0], c.classes().len(), &walker, &x, &[0])
                .newly;
        }
        assert!(flagged && m.is_flagged("key:walker"));
    }
}
