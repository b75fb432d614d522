//! Scalar helpers shared by the block formats: little-endian f16/bf16 fields → f32, and a
//! pairwise horizontal sum.
//!
//! Everything here is `#[inline(always)]`: the bodies must be inlined into the
//! `#[target_feature]` copies of the kernels (see `dispatch.rs`), or they would run without the
//! features those copies were built for.

/// The little-endian IEEE half at byte `off` of `b`, as f32 (exact).
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

/// IEEE binary16 bits → f32, exactly, without branches that would stop vectorization
/// (the three cases become selects).
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    const TWO_POW_MINUS_24: f32 = 5.960_464_5e-8; // 0x3380_0000
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff; // exponent and mantissa
    let exp = em & 0x7c00;
    let normal = (em << 13) + ((127 - 15) << 23); // rebias the exponent 15 → 127
    let inf_nan = (em << 13) | 0x7f80_0000;
    let subnormal = (em as f32 * TWO_POW_MINUS_24).to_bits(); // mantissa · 2^-24, zero included
    let bits = if exp == 0x7c00 {
        inf_nan
    } else if exp == 0 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(sign | bits)
}

/// bfloat16 bits → f32: the upper half of an f32.
#[inline(always)]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The sum of `N` (a power of two) accumulators, pairwise.
#[inline(always)]
pub(crate) fn hsum<const N: usize>(mut acc: [f32; N]) -> f32 {
    let mut width = N;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            let got = f16_to_f32(bits);
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn hsum_adds_all_lanes() {
        let acc: [f32; 16] = std::array::from_fn(|i| i as f32);
        assert_eq!(hsum(acc), 120.0);
    }
}
