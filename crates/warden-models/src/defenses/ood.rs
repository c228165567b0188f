//! Out-of-distribution inputs: per-feature z-scores and training ranges,
//! and the Mahalanobis distance where the card carries a precision matrix
//! (`stats`, written by scripts/calibrate_defenses.py with a Ledoit–Wolf
//! estimate). Thresholds are calibrated so that about 1% of training rows
//! are flagged.

use serde::Deserialize;

use super::{OodSettings, standardize};
use crate::ModelCard;

/// The detector of one model.
#[derive(Debug)]
pub struct OodDetector {
    z_threshold: f64,
    mahalanobis: Option<Mahalanobis>,
}

#[derive(Debug)]
struct Mahalanobis {
    threshold: f64,
    /// Mean of the standardized training rows.
    mean: Vec<f64>,
    /// Precision matrix of the standardized rows, row-major.
    precision: Vec<f64>,
}

#[derive(Deserialize)]
struct StatsFile {
    mean: Vec<f64>,
    precision: Vec<Vec<f64>>,
}

impl OodDetector {
    /// Builds the detector; `model_dir` holds the stats file.
    pub fn load(
        settings: &OodSettings,
        card: &ModelCard,
        model_dir: &std::path::Path,
    ) -> Result<Self, String> {
        let n = card.features.len();
        let mahalanobis = match (&settings.stats, settings.mahalanobis_threshold) {
            (Some(file), Some(threshold)) => {
                let path = model_dir.join(file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
                let stats: StatsFile = serde_json::from_str(&text)
                    .map_err(|e| format!("{}: not a stats file: {e}", path.display()))?;
                if stats.mean.len() != n
                    || stats.precision.len() != n
                    || stats.precision.iter().any(|r| r.len() != n)
                {
                    return Err(format!(
                        "{}: mean and precision must be over the {n} features",
                        path.display()
                    ));
                }
                Some(Mahalanobis {
                    threshold,
                    mean: stats.mean,
                    precision: stats.precision.into_iter().flatten().collect(),
                })
            }
            _ => None,
        };
        Ok(Self {
            z_threshold: settings.z_threshold,
            mahalanobis,
        })
    }

    /// Whether a row is out of distribution.
    pub fn flags(&self, card: &ModelCard, row: &[f32]) -> bool {
        let mut z = Vec::with_capacity(row.len());
        for (i, &v) in row.iter().enumerate() {
            let f = &card.features[i];
            if let Some((lo, hi)) = f.train_range
                && (f64::from(v) < lo || f64::from(v) > hi)
                && hi > lo
            {
                return true;
            }
            let s = standardize(card, i, v);
            // A z-score needs the feature's training mean and std.
            if f.mean.is_some() && f.std.is_some() && s.abs() > self.z_threshold {
                return true;
            }
            z.push(s);
        }
        self.mahalanobis.as_ref().is_some_and(|m| {
            let d: Vec<f64> = z.iter().zip(&m.mean).map(|(a, b)| a - b).collect();
            let n = d.len();
            let mut d2 = 0.0;
            for i in 0..n {
                let row = &m.precision[i * n..(i + 1) * n];
                d2 += d[i] * row.iter().zip(&d).map(|(p, v)| p * v).sum::<f64>();
            }
            d2 > m.threshold
        })
    }
}
