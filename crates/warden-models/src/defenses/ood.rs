//! Out-of-distribution inputs: per-feature z-scores and training ranges,
//! and the Mahalanobis distance where the card carries a precision matrix
//! (`stats`, written by scripts/calibrate_defenses.py with a Ledoit–Wolf
//! estimate). Thresholds are calibrated so that about 1% of training rows
//! are flagged.

use serde::Deserialize;

use super::{OodSettings, standardize};
use crate::card::InputSpec;

/// The detector of one model.
#[derive(Debug)]
pub struct OodDetector {
    z_threshold: Option<f64>,
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
        input: &InputSpec,
        model_dir: &std::path::Path,
    ) -> Result<Self, String> {
        let n = input.fixed_row_len().unwrap_or(0);
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
    pub fn flags(&self, input: &InputSpec, row: &[f32]) -> bool {
        let mut z = Vec::with_capacity(row.len());
        for (i, &v) in row.iter().enumerate() {
            if let Some((lo, hi)) = input.features.get(i).and_then(|f| f.train_range)
                && (f64::from(v) < lo || f64::from(v) > hi)
                && hi > lo
            {
                return true;
            }
            let s = standardize(input, i, v);
            // A z-score needs the element's training mean and std.
            let (mean, std) = input.element_stats(i);
            if let Some(t) = self.z_threshold
                && mean.is_some()
                && std.is_some()
                && s.abs() > t
            {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defenses::Action;

    /// Two standardized features (mean 0, std 1) seen in training over
    /// [-5, 5], strongly correlated: the precision matrix of
    /// [[1, 0.9], [0.9, 1]].
    fn card() -> crate::ModelCard {
        let features: String = (0..2)
            .map(|i| format!("[[input.features]]\nname = \"f{i}\"\nmin = -5.0\nmax = 5.0\nmean = 0.0\nstd = 1.0\n"))
            .collect();
        crate::ModelCard::parse(
            &format!("[input]\nname = \"input\"\n{features}[output]\nlabel = \"l\"\nclasses = [\"a\", \"b\"]\n"),
            crate::card::CardDefaults {
                max_batch: 8,
                range_tolerance: 1.0,
            },
        )
        .unwrap()
    }

    fn detector(dir: &std::path::Path, stats: &str) -> Result<OodDetector, String> {
        std::fs::write(dir.join("ood_stats.json"), stats).unwrap();
        OodDetector::load(
            &OodSettings {
                action: Action::Flag,
                z_threshold: Some(3.0),
                mahalanobis_threshold: Some(9.0),
                stats: Some("ood_stats.json".into()),
            },
            &card().inputs[0],
            dir,
        )
    }

    const CORRELATED: &str =
        r#"{"mean": [0.0, 0.0], "precision": [[5.263158, -4.736842], [-4.736842, 5.263158]]}"#;

    #[test]
    fn range_z_score_and_mahalanobis_each_flag_what_they_should() {
        let dir = tempfile::tempdir().unwrap();
        let d = detector(dir.path(), CORRELATED).unwrap();
        let c = card();
        // Near the training data, and along the correlation: passes.
        assert!(!d.flags(&c.inputs[0], &[0.0, 0.0]));
        assert!(!d.flags(&c.inputs[0], &[2.0, 2.0]));
        // Outside the training range (though within validation's tolerance).
        assert!(d.flags(&c.inputs[0], &[5.5, 5.5]));
        // |z| over 3 on one feature, inside the training range.
        assert!(d.flags(&c.inputs[0], &[3.5, 3.4]));
        // Each |z| small, but against the correlation: only Mahalanobis sees
        // it (d² = 5.26·4 + 5.26·4 + 2·4.74·4 = 80 > 9).
        assert!(d.flags(&c.inputs[0], &[2.0, -2.0]));
        // Without the matrix the same row passes: the z-score alone is blind to it.
        let z_only = OodDetector::load(
            &OodSettings {
                action: Action::Flag,
                z_threshold: Some(3.0),
                mahalanobis_threshold: None,
                stats: None,
            },
            &c.inputs[0],
            dir.path(),
        )
        .unwrap();
        assert!(!z_only.flags(&c.inputs[0], &[2.0, -2.0]));
        assert!(z_only.flags(&c.inputs[0], &[3.5, 3.4]));
    }

    #[test]
    fn a_stats_file_that_does_not_fit_the_card_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = detector(dir.path(), r#"{"mean": [0.0], "precision": [[1.0]]}"#).unwrap_err();
        assert!(e.contains("2 features"), "{e}");
        let e = detector(dir.path(), "not json").unwrap_err();
        assert!(e.contains("not a stats file"), "{e}");
    }
}
