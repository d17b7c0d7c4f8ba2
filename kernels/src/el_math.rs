//! Scalar pieces of the encouraging loss that the fused CPU loops inline.
//!
//! `exp_f32` and `ln_f32` are branch-free polynomial approximations (Cephes
//! style, about 1 ulp) so that the row loops vectorise; libm's calls do not.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x for x ≤ 88; returns 0 below −87 (where the result would be subnormal) and for −∞.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = poly * r2 + r + 1.0;
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// ln(x) for normal positive x (the loss only asks for x in [1e-5, 1]).
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // in [0.5, 1)
    let small = m < SQRT_HALF;
    e -= small as i32;
    let m = if small { m + m - 1.0 } else { m - 1.0 };
    let ef = e as f32;
    let z = m * m;
    let poly = (((((((7.037_683_6e-2 * m - 1.151_461e-1) * m + 1.167_699_9e-1) * m - 1.242_014_1e-1) * m
        + 1.424_932_3e-1)
        * m
        - 1.666_805_8e-1)
        * m
        + 2.000_071_4e-1)
        * m
        - 2.499_999_4e-1)
        * m
        + 3.333_333e-1;
    let y = poly * m * z + LN2_LO * ef - 0.5 * z;
    m + y + LN2_HI * ef
}

/// The bonus b(p) = ln(max(1 − p, 1e-5)), continued linearly above `log_end`.
#[derive(Clone, Copy, Debug)]
pub struct Bonus {
    pub(crate) log_end: f32,
    /// `log_end == 1`: no tangent continuation.
    pub(crate) full: bool,
    /// Slope of the tangent, 1 / (log_end − 1).
    pub(crate) slope: f32,
    /// ln(1 − log_end), the tangent's value at log_end.
    pub(crate) at_end: f32,
}

/// The clamp of 1 − p inside the logarithm.
pub const ONE_MINUS_P_FLOOR: f32 = 1e-5;

impl Bonus {
    pub fn new(log_end: f64) -> Bonus {
        let full = log_end == 1.0;
        Bonus {
            log_end: log_end as f32,
            full,
            slope: if full { 0.0 } else { (1.0 / (log_end - 1.0)) as f32 },
            at_end: if full { 0.0 } else { (1.0f32 - log_end as f32).ln() },
        }
    }

    /// (b(p), b'(p)·p): the bonus and its derivative with respect to ln p.
    /// The clamp passes no gradient, as in autograd (which passes it at equality).
    #[inline(always)]
    pub fn eval(&self, p: f32) -> (f32, f32) {
        let one_minus = 1.0 - p;
        let log_part = ln_f32(one_minus.max(ONE_MINUS_P_FLOOR));
        let log_slope = if one_minus >= ONE_MINUS_P_FLOOR { -p / one_minus } else { 0.0 };
        if !self.full && p > self.log_end {
            ((p - self.log_end) * self.slope + self.at_end, p * self.slope)
        } else {
            (log_part, log_slope)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let mut x = -87.0f32;
        while x <= 10.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, want {want}");
            x += 0.013;
        }
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn ln_is_accurate_to_a_few_ulp() {
        let mut x = 1e-5f32;
        while x <= 1.0 {
            let want = (x as f64).ln();
            let got = ln_f32(x) as f64;
            assert!((got - want).abs() <= 3e-7 * want.abs().max(1e-6), "ln({x}) = {got}, want {want}");
            x *= 1.0007;
        }
        assert_eq!(ln_f32(1.0), 0.0);
    }

    #[test]
    fn bonus_is_the_tangent_above_log_end() {
        let b = Bonus::new(0.75);
        let (v, d) = b.eval(1.0);
        assert!((v - (-4.0 * 0.25 + 0.25f32.ln())).abs() < 1e-6);
        assert!((d + 4.0).abs() < 1e-6);
        let (v, d) = b.eval(0.5);
        assert!((v - 0.5f32.ln()).abs() < 1e-6);
        assert!((d + 1.0).abs() < 1e-6);
        // Full bonus: the clamp holds at p = 1 and passes no gradient.
        let (v, d) = Bonus::new(1.0).eval(1.0);
        assert!((v - 1e-5f32.ln()).abs() < 1e-5);
        assert_eq!(d, 0.0);
    }
}
