//! Feature squeezing (Xu, Evans and Qi, NDSS 2018): the model is run on
//! squeezed copies of each input — bit-depth reduction, and 2x2 median
//! smoothing for image-shaped inputs — and an input whose prediction moves
//! by more than a threshold (the largest L1 distance between probability
//! vectors) is flagged. The threshold is calibrated to 5% false positives on
//! held-out clean data by scripts/calibrate_defenses.py. Costs one more row
//! of inference per squeezer (run in the same batch as the input).

use super::SqueezeSettings;
use crate::card::InputSpec;

/// How many squeezed copies each row gets.
pub fn squeezers(settings: &SqueezeSettings) -> usize {
    1 + usize::from(settings.image.is_some())
}

/// The squeezed copies of `values` (`rows` rows): all bit-depth rows, then
/// (for images) all median-smoothed rows.
pub fn squeezed(settings: &SqueezeSettings, input: &InputSpec, values: &[f32]) -> Vec<f32> {
    let width = input.fixed_row_len().unwrap_or(values.len()).max(1);
    let levels = f64::from((1u32 << settings.bit_depth) - 1);
    let mut out = Vec::with_capacity(values.len() * squeezers(settings));
    for row in values.chunks(width) {
        for (i, &v) in row.iter().enumerate() {
            out.push(match input.bounds(i) {
                Some((lo, hi)) if hi > lo => {
                    let s = ((f64::from(v) - lo) / (hi - lo)).clamp(0.0, 1.0);
                    (lo + (s * levels).round() / levels * (hi - lo)) as f32
                }
                _ => v,
            });
        }
    }
    // Median smoothing of each channel: a row is whole h × w planes (the
    // card's check), and each plane is smoothed on its own.
    if let Some((h, w)) = settings.image
        && h * w > 0
    {
        for plane in values.chunks(width).flat_map(|row| row.chunks(h * w)) {
            for y in 0..h {
                for x in 0..w {
                    let at = |yy: usize, xx: usize| {
                        plane
                            .get(yy.min(h - 1) * w + xx.min(w - 1))
                            .copied()
                            .unwrap_or_default()
                    };
                    let mut four = [at(y, x), at(y, x + 1), at(y + 1, x), at(y + 1, x + 1)];
                    four.sort_by(f32::total_cmp);
                    out.push((four[1] + four[2]) / 2.0);
                }
            }
        }
    }
    out
}

/// Per row, the largest L1 distance between the original probabilities and
/// a squeezed copy's. `squeezed` is laid out as [`squeezed`] lays out rows.
pub fn scores(classes: usize, original: &[f32], squeezed: &[f32], rows: usize) -> Vec<f64> {
    let copies = squeezed.len() / original.len().max(1);
    (0..rows)
        .map(|r| {
            let o = &original[r * classes..(r + 1) * classes];
            (0..copies)
                .map(|c| {
                    let s = &squeezed[(c * rows + r) * classes..(c * rows + r + 1) * classes];
                    o.iter()
                        .zip(s)
                        .map(|(a, b)| f64::from((a - b).abs()))
                        .sum::<f64>()
                })
                .fold(0.0, f64::max)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defenses::Action;

    fn card(n: usize) -> crate::ModelCard {
        let features: String = (0..n)
            .map(|i| format!("[[input.features]]\nname = \"p{i}\"\nrange = [0.0, 16.0]\n"))
            .collect();
        crate::ModelCard::parse(
            &format!("[input]\nname = \"input\"\n{features}[output]\nlabel = \"l\"\nprobabilities = \"p\"\nclasses = [\"a\", \"b\"]\n"),
            crate::card::CardDefaults {
                max_batch: 8,
                range_tolerance: 0.0,
            },
        )
        .unwrap()
    }

    #[test]
    fn bit_depth_and_median_squeeze_as_published() {
        let c = card(4);
        let s = SqueezeSettings {
            action: Action::Flag,
            bit_depth: 1,
            image: Some((2, 2)),
            threshold: 0.5,
        };
        assert_eq!(squeezers(&s), 2);
        let out = squeezed(&s, &c.inputs[0], &[1.0, 9.0, 16.0, 7.0]);
        // 1 bit: each value to 0 or 16.
        assert_eq!(&out[..4], &[0.0, 16.0, 16.0, 0.0]);
        // 2x2 median with edge replication (median of four = mean of the
        // middle two): {1,9,16,7} -> 8, {9,9,7,7} -> 8, {16,7,16,7} -> 11.5,
        // {7,7,7,7} -> 7.
        assert_eq!(&out[4..], &[8.0, 8.0, 11.5, 7.0]);
    }

    #[test]
    fn each_channel_of_an_image_is_smoothed_on_its_own() {
        // Two rows of a [N, 3, 2, 2] image: 12 values a row.
        let c = card(12);
        let s = SqueezeSettings {
            action: Action::Flag,
            bit_depth: 4,
            image: Some((2, 2)),
            threshold: 0.5,
        };
        let row: Vec<f32> = [[1.0, 9.0, 16.0, 7.0], [0.0; 4], [4.0; 4]].concat();
        let values = [row.clone(), row].concat();
        let out = squeezed(&s, &c.inputs[0], &values);
        // Bit depth: 24 values; then smoothing: 24 more, plane by plane.
        assert_eq!(out.len(), 48);
        let smoothed = &out[24..];
        assert_eq!(&smoothed[..4], &[8.0, 8.0, 11.5, 7.0]);
        assert_eq!(&smoothed[4..8], &[0.0; 4]);
        assert_eq!(&smoothed[8..12], &[4.0; 4]);
        assert_eq!(&smoothed[12..24], &smoothed[..12]);
    }

    #[test]
    fn scores_take_the_worst_squeezer() {
        // Two rows, two classes, two squeezers.
        let original = [0.9, 0.1, 0.5, 0.5];
        let squeezed = [0.8, 0.2, 0.5, 0.5, 0.9, 0.1, 0.1, 0.9];
        let s = scores(2, &original, &squeezed, 2);
        assert!(
            (s[0] - 0.2).abs() < 1e-6 && (s[1] - 0.8).abs() < 1e-6,
            "{s:?}"
        );
    }
}
