//! The Shapiro–Wilk W statistic, from the published algorithm: Royston
//! (1995), "Remark AS R94: A remark on algorithm AS 181: the W-test for
//! normality", Applied Statistics 44(4), for the coefficients, and the
//! normal quantiles of Wichura (1988), algorithm AS 241 (PPND16).
//!
//! Hand-written rather than a dependency: the maintained crate that has it
//! (`normality`) brings ndarray, statrs (with nalgebra) and a second `rand`
//! for one function of about sixty lines; tests compare with scipy's values.
//! Only W is computed: PRADA compares W with a threshold, not a p-value.

/// W for a sample of 3 to 5000 values; `None` outside that range or when
/// all values are equal.
pub fn shapiro_wilk_w(sample: &[f64]) -> Option<f64> {
    let n = sample.len();
    if !(3..=5000).contains(&n) || sample.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut x = sample.to_vec();
    x.sort_by(f64::total_cmp);
    let range = x[n - 1] - x[0];
    if range < 1e-19 * x[n - 1].abs().max(1.0) {
        return None;
    }
    let a = coefficients(n);
    let half = n / 2;
    let b: f64 = (0..half).map(|i| a[i] * (x[n - 1 - i] - x[i])).sum();
    let mean = x.iter().sum::<f64>() / n as f64;
    let ss: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
    Some((b * b / ss).min(1.0))
}

/// The AS R94 coefficients a_1..a_{n/2} (for the lower half, positive).
fn coefficients(n: usize) -> Vec<f64> {
    const C1: [f64; 6] = [0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056];
    const C2: [f64; 6] = [0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633];
    let half = n / 2;
    if n == 3 {
        return vec![std::f64::consts::FRAC_1_SQRT_2];
    }
    let an25 = n as f64 + 0.25;
    let m: Vec<f64> = (1..=half)
        .map(|i| normal_quantile((i as f64 - 0.375) / an25))
        .collect();
    let summ2 = 2.0 * m.iter().map(|v| v * v).sum::<f64>();
    let ssumm2 = summ2.sqrt();
    let rsn = 1.0 / (n as f64).sqrt();
    let a1 = poly(&C1, rsn) - m[0] / ssumm2;
    let mut a = vec![0.0; half];
    let (first, fac) = if n > 5 {
        let a2 = -m[1] / ssumm2 + poly(&C2, rsn);
        let fac = ((summ2 - 2.0 * m[0] * m[0] - 2.0 * m[1] * m[1])
            / (1.0 - 2.0 * a1 * a1 - 2.0 * a2 * a2))
            .sqrt();
        a[1] = a2;
        (2, fac)
    } else {
        let fac = ((summ2 - 2.0 * m[0] * m[0]) / (1.0 - 2.0 * a1 * a1)).sqrt();
        (1, fac)
    };
    a[0] = a1;
    for i in first..half {
        a[i] = -m[i] / fac;
    }
    a
}

/// c[0] + c[1] x + … + c[5] x^5.
fn poly(c: &[f64; 6], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
}

/// The standard normal quantile, AS 241 (PPND16): about 1e-16 relative
/// accuracy.
#[allow(
    clippy::inconsistent_digit_grouping,
    clippy::excessive_precision,
    clippy::unreadable_literal,
    reason = "the published AS 241 coefficients, digit for digit"
)]
pub fn normal_quantile(p: f64) -> f64 {
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q
            * (((((((2509.080_928_730_122_7 * r + 33430.575_583_588_128) * r
                + 67265.770_927_008_7)
                * r
                + 45921.953_931_549_87)
                * r
                + 13731.693_765_509_461)
                * r
                + 1971.590_950_306_551_3)
                * r
                + 133.141_667_891_784_38)
                * r
                + 3.387_132_872_796_366_5)
            / (((((((5226.495_278_852_545 * r + 28729.085_735_721_943) * r
                + 39307.895_800_092_71)
                * r
                + 21213.794_301_586_597)
                * r
                + 5394.196_021_424_751)
                * r
                + 687.187_007_492_057_9)
                * r
                + 42.313_330_701_600_91)
                * r
                + 1.0);
    }
    let r = if q < 0.0 { p } else { 1.0 - p };
    let r = (-r.ln()).sqrt();
    let v = if r <= 5.0 {
        let r = r - 1.6;
        (((((((7.745_450_142_783_414e-4 * r + 0.022_723_844_989_269_184) * r
            + 0.241_780_725_177_450_6)
            * r
            + 1.270_458_252_452_368_4)
            * r
            + 3.647_848_324_763_204_5)
            * r
            + 5.769_497_221_460_691)
            * r
            + 4.630_337_846_156_546)
            * r
            + 1.423_437_110_749_683_5)
            / (((((((1.050_750_071_644_416_9e-9 * r + 5.475_938_084_995_345e-4) * r
                + 0.015_198_666_563_616_457)
                * r
                + 0.148_103_976_427_480_08)
                * r
                + 0.689_767_334_985_1)
                * r
                + 1.676_384_830_183_803_8)
                * r
                + 2.053_191_626_637_759)
                * r
                + 1.0)
    } else {
        let r = r - 5.0;
        (((((((2.010_334_399_292_288_1e-7 * r + 2.711_555_568_743_487_6e-5) * r
            + 1.242_660_947_388_078_4e-3)
            * r
            + 0.026_532_189_526_576_124)
            * r
            + 0.296_560_571_828_504_9)
            * r
            + 1.784_826_539_917_291_3)
            * r
            + 5.463_784_911_164_114)
            * r
            + 6.657_904_643_501_103)
            / (((((((2.044_263_103_389_939_7e-15 * r + 1.421_511_758_316_446e-7) * r
                + 1.846_318_317_510_054_8e-5)
                * r
                + 7.868_691_311_456_133e-4)
                * r
                + 0.014_875_361_290_850_615)
                * r
                + 0.136_929_880_922_735_8)
                * r
                + 0.599_832_206_555_888)
                * r
                + 1.0)
    };
    if q < 0.0 { -v } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: &str, n: usize) -> Vec<f64> {
        (1..=n)
            .map(|t| {
                let tf = t as f64;
                match kind {
                    "wave" => (tf * 0.7).sin() * 3.0 + (t % 7) as f64,
                    "normalish" => normal_quantile((tf - 0.5) / n as f64) + 0.01 * tf.sin(),
                    _ => -(1.0 - (tf - 0.5) / n as f64).ln(),
                }
            })
            .collect()
    }

    /// scipy.stats.shapiro(...).statistic for the same samples (scipy 1.x).
    const SCIPY: [(&str, usize, f64); 30] = [
        ("wave", 3, 0.9163518514577824),
        ("wave", 4, 0.8309041836812325),
        ("wave", 5, 0.9260267197688857),
        ("wave", 6, 0.9355024821685456),
        ("wave", 11, 0.8958783039638808),
        ("wave", 20, 0.9458922530968363),
        ("wave", 50, 0.9793278726092606),
        ("wave", 101, 0.9865875026930012),
        ("wave", 500, 0.9858014584364391),
        ("wave", 2000, 0.9864199332603826),
        ("normalish", 3, 0.9999937316853994),
        ("normalish", 4, 0.9990038972652858),
        ("normalish", 5, 0.9986354348865683),
        ("normalish", 6, 0.9984802934813656),
        ("normalish", 11, 0.9977507607874536),
        ("normalish", 20, 0.9984621924872463),
        ("normalish", 50, 0.9991044291679473),
        ("normalish", 101, 0.9995083805965493),
        ("normalish", 500, 0.9998572908781262),
        ("normalish", 2000, 0.9999681073235355),
        ("exp", 3, 0.9574325216642685),
        ("exp", 4, 0.9327030779780897),
        ("exp", 5, 0.9166371042107668),
        ("exp", 6, 0.9052171394681161),
        ("exp", 11, 0.8758897663292935),
        ("exp", 20, 0.856357456706601),
        ("exp", 50, 0.8375865215648726),
        ("exp", 101, 0.8290079864698392),
        ("exp", 500, 0.8197052057011075),
        ("exp", 2000, 0.8170494237829193),
    ];

    #[test]
    fn w_agrees_with_scipy() {
        for (kind, n, want) in SCIPY {
            let got = shapiro_wilk_w(&sample(kind, n)).unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{kind} n={n}: {got} vs scipy {want}"
            );
        }
    }

    #[test]
    fn quantiles_agree_with_scipy() {
        for (p, want) in [
            (0.001, -3.090232306167813),
            (0.02, -2.053748910631823),
            (0.3, -0.5244005127080409),
            (0.5, 0.0),
            (0.77, 0.7388468491852137),
            (0.999, 3.090232306167813),
            (1e-10, -6.361340902404056),
        ] {
            assert!((normal_quantile(p) - want).abs() < 1e-12, "{p}");
        }
    }

    #[test]
    fn degenerate_samples_have_no_w() {
        assert_eq!(shapiro_wilk_w(&[1.0, 2.0]), None);
        assert_eq!(shapiro_wilk_w(&[3.0; 10]), None);
        assert_eq!(shapiro_wilk_w(&[1.0, f64::NAN, 2.0]), None);
        assert_eq!(shapiro_wilk_w(&vec![1.0; 5001]), None);
    }
}
