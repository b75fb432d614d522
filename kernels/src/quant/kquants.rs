//! The k-quant formats Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (256-element super-blocks): layouts from
//! ggml's `ggml-common.h` (`block_q2_K` …, `QK_K = 256`), formulas from `ggml-quants.c`
//! (`dequantize_row_q2_K` …, `get_scale_min_k4`).
//!
//! Each format is a [`KQuant`]: its header (scales, mins, `d`) is unpacked once per super-block,
//! then the block is decoded 32 elements at a time ("chunk" `c` = elements `32c .. 32c + 32`) into
//! a stack array, with ggml's arithmetic: `dequantize` stores a chunk, `dot` multiplies it with the
//! matching 32 elements of `x` into four independent 8-lane accumulators. Nothing is allocated;
//! everything is static dispatch and `#[inline(always)]`, so the AVX2 copies in `dispatch.rs` get
//! all of it.
//!
//! Bit fields are widened to 32 bits before their (chunk-dependent) shifts: AVX2 has no byte
//! shifts, and LLVM left the 8-bit form scalar.
//!
//! The sub-block scales are unpacked once per super-block by closed-form bit extraction; the
//! reference (`crate::reference`) transcribes ggml's own unpacking instead, so the two check
//! each other.

use super::common::f16_at;
use super::simd::{store32, Acc32, Simd};
use super::QK_K;

/// Elements per chunk.
const CH: usize = 32;
/// Chunks per super-block.
const CHUNKS: usize = QK_K / CH;

/// Q3_K's sixteen 6-bit scales, packed in 12 bytes, minus their offset 32.
/// Scale `j`: low 4 bits are nibble `j / 8` of byte `j % 8`; high 2 bits are bits
/// `2 (j / 4) ..` of byte `8 + j % 4` (what ggml's `kmask1`/`kmask2` shuffle computes).
#[inline(always)]
fn q3_k_scales(s: &[u8]) -> [f32; 16] {
    let s = &s[..12];
    let mut out = [0f32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = (s[j % 8] >> (4 * (j / 8))) & 0x0F;
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 0x03;
        *o = ((low | (high << 4)) as i32 - 32) as f32;
    }
    out
}

/// Q4_K/Q5_K's eight 6-bit scales and eight 6-bit mins, packed in 12 bytes (ggml's
/// `get_scale_min_k4` for all `j` at once). For `j < 4`: scale and min are the low 6 bits of
/// bytes `j` and `j + 4`; for `j ≥ 4`: their low 4 bits are the nibbles of byte `j + 4` and their
/// high 2 bits the top bits of bytes `j - 4` and `j`.
#[inline(always)]
fn k4_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let s = &s[..12];
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// One k-quant format: its block size, its per-block header, and its chunk decoder.
trait KQuant {
    /// Bytes per super-block.
    const BYTES: usize;
    /// What is unpacked once per super-block.
    type Header;
    fn header(b: &[u8]) -> Self::Header;
    /// The 32 values of chunk `c` (0..8) of super-block `b`.
    fn chunk(b: &[u8], h: &Self::Header, c: usize) -> [f32; CH];
}

/// `block_q2_K { scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 }` (84 bytes).
/// Chunk `c` takes bits `2 (c % 4)` of `qs[32 (c / 4) ..][..32]`; each 16 elements have a scale
/// byte (`scales[2c]`, `scales[2c + 1]`): low nibble × `d` scales, high nibble × `dmin` is
/// subtracted.
struct Q2K;

impl KQuant for Q2K {
    const BYTES: usize = 84;
    type Header = (f32, f32); // (d, dmin)

    #[inline(always)]
    fn header(b: &[u8]) -> (f32, f32) {
        (f16_at(b, 80), f16_at(b, 82))
    }

    #[inline(always)]
    fn chunk(b: &[u8], &(d, dmin): &(f32, f32), c: usize) -> [f32; CH] {
        let scales = &b[0..16];
        let q = &b[16 + 32 * (c / 4)..][..CH];
        let shift = 2 * (c % 4);
        let mut v = [0f32; CH];
        for g in 0..2 {
            let sc = scales[2 * c + g];
            let dl = d * (sc & 0x0F) as f32;
            let ml = dmin * (sc >> 4) as f32;
            for l in 16 * g..16 * g + 16 {
                v[l] = dl * ((q[l] as u32 >> shift) & 3) as f32 - ml;
            }
        }
        v
    }
}

/// `block_q3_K { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }` (110 bytes).
/// Chunk `c`: low 2 bits from bits `2 (c % 4)` of `qs[32 (c / 4) ..]`, and 4 is subtracted where
/// bit `c` of `hmask[l]` is *clear*; signed 6-bit scales per 16 elements.
struct Q3K;

impl KQuant for Q3K {
    const BYTES: usize = 110;
    type Header = [f32; 16]; // d · (scale - 32)

    #[inline(always)]
    fn header(b: &[u8]) -> [f32; 16] {
        let d = f16_at(b, 108);
        q3_k_scales(&b[96..108]).map(|s| d * s)
    }

    #[inline(always)]
    fn chunk(b: &[u8], scales: &[f32; 16], c: usize) -> [f32; CH] {
        let hmask = &b[0..32];
        let q = &b[32 + 32 * (c / 4)..][..CH];
        let shift = 2 * (c % 4);
        let mut v = [0f32; CH];
        for g in 0..2 {
            let dl = scales[2 * c + g];
            for l in 16 * g..16 * g + 16 {
                let low = ((q[l] as i32) >> shift) & 3;
                let high = ((hmask[l] as i32) >> c) & 1;
                v[l] = dl * (low + 4 * high - 4) as f32;
            }
        }
        v
    }
}

/// Q4_K/Q5_K header: `d · scale` and `dmin · min` per chunk.
type ScalesMins = ([f32; 8], [f32; 8]);

#[inline(always)]
fn k4_header(b: &[u8]) -> ScalesMins {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = k4_scales_mins(&b[4..16]);
    (sc.map(|s| d * s as f32), mn.map(|m| dmin * m as f32))
}

/// `block_q4_K { d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }` (144 bytes).
/// Chunk `c` is the low (`c` even) or high (`c` odd) nibbles of `qs[32 (c / 2) ..][..32]`, with
/// scale and min `c`.
struct Q4K;

impl KQuant for Q4K {
    const BYTES: usize = 144;
    type Header = ScalesMins;

    #[inline(always)]
    fn header(b: &[u8]) -> ScalesMins {
        k4_header(b)
    }

    #[inline(always)]
    fn chunk(b: &[u8], (scales, mins): &ScalesMins, c: usize) -> [f32; CH] {
        let q = &b[16 + 32 * (c / 2)..][..CH];
        let shift = 4 * (c % 2);
        let (dl, ml) = (scales[c], mins[c]);
        let mut v = [0f32; CH];
        for l in 0..CH {
            v[l] = dl * ((q[l] as u32 >> shift) & 0x0F) as f32 - ml;
        }
        v
    }
}

/// `block_q5_K { d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`
/// (176 bytes): Q4_K's nibbles plus a fifth bit, bit `c` of `qh[l]`, worth 16.
struct Q5K;

impl KQuant for Q5K {
    const BYTES: usize = 176;
    type Header = ScalesMins;

    #[inline(always)]
    fn header(b: &[u8]) -> ScalesMins {
        k4_header(b)
    }

    #[inline(always)]
    fn chunk(b: &[u8], (scales, mins): &ScalesMins, c: usize) -> [f32; CH] {
        let qh = &b[16..48];
        let q = &b[48 + 32 * (c / 2)..][..CH];
        let shift = 4 * (c % 2);
        let (dl, ml) = (scales[c], mins[c]);
        let mut v = [0f32; CH];
        for l in 0..CH {
            let low = (q[l] as u32 >> shift) & 0x0F;
            let high = ((qh[l] as u32 >> c) & 1) << 4;
            v[l] = dl * (low | high) as f32 - ml;
        }
        v
    }
}

/// `block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }` (210 bytes).
/// In half `h = c / 4`, quarter `k = c % 4`: low 4 bits are nibble `k / 2` of
/// `ql[64h + 32 (k % 2) ..][..32]`, high 2 bits are bits `2k ..` of `qh[32h ..][..32]`; the
/// value is `q - 32` times `d` times the signed scale `8h + 2k + l / 16`.
struct Q6K;

impl KQuant for Q6K {
    const BYTES: usize = 210;
    type Header = [f32; 16]; // d · scale

    #[inline(always)]
    fn header(b: &[u8]) -> [f32; 16] {
        let d = f16_at(b, 208);
        let scales = &b[192..208];
        std::array::from_fn(|i| d * (scales[i] as i8) as f32)
    }

    #[inline(always)]
    fn chunk(b: &[u8], scales: &[f32; 16], c: usize) -> [f32; CH] {
        let (h, k) = (c / 4, c % 4);
        let low = &b[64 * h + 32 * (k % 2)..][..CH];
        let high = &b[128 + 32 * h..][..CH];
        let (low_shift, high_shift) = (4 * (k / 2), 2 * k);
        let mut v = [0f32; CH];
        for g in 0..2 {
            let dl = scales[8 * h + 2 * k + g];
            for l in 16 * g..16 * g + 16 {
                let q = ((low[l] as i32 >> low_shift) & 0x0F) | (((high[l] as i32 >> high_shift) & 3) << 4);
                v[l] = dl * (q - 32) as f32;
            }
        }
        v
    }
}

#[inline(always)]
fn dequantize_blocks<S: Simd, F: KQuant>(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(F::BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let h = F::header(b);
        for c in 0..CHUNKS {
            store32::<S>(&F::chunk(b, &h, c), &mut o[CH * c..]);
        }
    }
}

#[inline(always)]
fn dot_blocks<S: Simd, F: KQuant>(bytes: &[u8], x: &[f32]) -> f32 {
    let mut acc = Acc32::<S>::new();
    for (b, xs) in bytes.chunks_exact(F::BYTES).zip(x.chunks_exact(QK_K)) {
        let h = F::header(b);
        for c in 0..CHUNKS {
            acc.add(&F::chunk(b, &h, c), &xs[CH * c..]);
        }
    }
    acc.sum()
}

/// One `dequantize_*` / `dot_*` pair per format.
macro_rules! row_kernels {
    ($($format:ident => $dequantize:ident, $dot:ident;)*) => {$(
        #[inline(always)]
        pub(super) fn $dequantize<S: Simd>(bytes: &[u8], out: &mut [f32]) {
            dequantize_blocks::<S, $format>(bytes, out)
        }

        #[inline(always)]
        pub(super) fn $dot<S: Simd>(bytes: &[u8], x: &[f32]) -> f32 {
            dot_blocks::<S, $format>(bytes, x)
        }
    )*};
}

row_kernels! {
    Q2K => dequantize_q2_k, dot_q2_k;
    Q3K => dequantize_q3_k, dot_q3_k;
    Q4K => dequantize_q4_k, dot_q4_k;
    Q5K => dequantize_q5_k, dot_q5_k;
    Q6K => dequantize_q6_k, dot_q6_k;
}
