//! Integer dots of the k-quant formats (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) with 8-bit activations
//! ([`Q8Ref`]): ggml's `ggml_vec_dot_q2_K_q8_K` … `ggml_vec_dot_q6_K_q8_K` (`ggml-cpu/quants.c`,
//! `arch/x86/quants.c`), block layouts from `ggml-common.h`, scale unpacking as in
//! `kquants.rs` / `reference.rs`.
//!
//! ggml's `block_q8_K` has one scale per 256 elements; ours ([`Q8Ref`]) has one per 32 (`d_a,c`
//! for chunk `c`, elements `32c .. 32c + 32` of a super-block) and a sum per 16 (`S_g`, group `g`
//! = elements `16g .. 16g + 16`). So every chunk's integer sum gets its own float factor. With the
//! weight quants `q` kept unsigned (the offsets go through `S_g`, as in `legacy_q8.rs`):
//! - Q4_K / Q5_K (`w = d·sc_c·q − dmin·m_c` per chunk):
//!   `Σ_c d_a,c·(d·sc_c·Σ_{i∈c} q_i y_i − dmin·m_c·(S_2c + S_2c+1))`;
//! - Q6_K / Q3_K (`w = d·sc_g·(q − o)` per group, `o` = 32 / 4):
//!   `d·Σ_c d_a,c·Σ_{g∈c} sc_g·(Σ_{i∈g} q_i y_i − o·S_g)`;
//! - Q2_K (`w = d·sc_g·q − dmin·m_g` per group):
//!   `Σ_c d_a,c·Σ_{g∈c} (d·sc_g·Σ_{i∈g} q_i y_i − dmin·m_g·S_g)`.
//!
//! The sums over `i` are exact in i32 (at most 32·63·127 in magnitude), so every variant computes
//! the same integers and differs from the others only in the order of its f32 operations.
//!
//! Variants: [`portable`] (plain Rust, any target) and, on x86-64, `avx2` (`vpmaddubsw` +
//! `vpmaddwd`), `avx512vnni` (`vpdpbusd` on 256-bit vectors, AVX512-VNNI + AVX512-VL) and
//! `avxvnni` (the VEX `vpdpbusd`), in `kquants_q8_x86.rs`. [`best`] picks the fastest this CPU
//! supports, detected once.
//!
//! Like the f32 row kernels, the dots never panic and never read out of bounds: they stop at the
//! last super-block that both `row` and every slice of `acts` hold in full.

use super::common::f16_at;
use super::q8::{DotQ8, DotQ8Rows, Q8Ref, Q8_BLOCK};
use super::{DType, RowKernels, QK_K};

#[cfg(target_arch = "x86_64")]
#[path = "kquants_q8_x86.rs"]
mod x86;

/// The fastest integer dot this CPU supports for `dtype`, or `None` when not a k-quant format.
/// Cheap: the CPU features are detected on the first call only.
pub(super) fn best(dtype: DType) -> Option<DotQ8> {
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = x86::best(dtype) {
        return Some(dot);
    }
    portable(dtype)
}

/// The fastest many-rows kernel for `dtype`, where one is written (x86-64 with AVX2).
pub(super) fn best_rows(dtype: DType) -> Option<DotQ8Rows> {
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = x86::best_rows(dtype) {
        return Some(dot);
    }
    let _ = dtype;
    None
}

/// Every many-rows kernel this CPU can run for `dtype`, named. For tests.
pub(super) fn rows_variants(dtype: DType) -> Vec<(&'static str, DotQ8Rows)> {
    #[cfg(target_arch = "x86_64")]
    return x86::rows_variants(dtype);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        Vec::new()
    }
}

/// Every variant this CPU can run for `dtype`, named, the portable one first; empty when `dtype`
/// is not a k-quant format. For tests and benchmarks.
pub(super) fn variants(dtype: DType) -> Vec<(&'static str, DotQ8)> {
    let out = portable(dtype).map(|d| ("portable", d)).into_iter();
    #[cfg(target_arch = "x86_64")]
    let out = out.chain(x86::variants(dtype));
    out.collect()
}

impl RowKernels {
    /// Every integer-dot variant of a k-quant `dtype` this CPU can run (see
    /// [`RowKernels::dot_q8`]), named, `"portable"` first; empty for other formats. For tests and
    /// benchmarks that check or time each one.
    pub fn kquants_q8_variants(dtype: DType) -> Vec<(&'static str, DotQ8)> {
        variants(dtype)
    }

    /// Every many-rows integer-dot kernel of a k-quant `dtype` this CPU can run (see
    /// [`RowKernels::dot_q8_rows`]), named. For tests and benchmarks.
    pub fn kquants_q8_rows_variants(dtype: DType) -> Vec<(&'static str, DotQ8Rows)> {
        rows_variants(dtype)
    }
}

/// The plain-Rust dots (no run-time detection), for any target.
pub(super) fn portable(dtype: DType) -> Option<DotQ8> {
    Some(match dtype {
        DType::Q2_K => dot_q2_k,
        DType::Q3_K => dot_q3_k,
        DType::Q4_K => dot_q4_k,
        DType::Q5_K => dot_q5_k,
        DType::Q6_K => dot_q6_k,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Shared by the variants
// ---------------------------------------------------------------------------------------------

/// Chunks (activation blocks of 32) per super-block.
const CHUNKS: usize = QK_K / Q8_BLOCK;

/// Whole super-blocks that `bytes` (super-blocks of `block_bytes`) and every slice of `acts` hold.
#[inline(always)]
fn whole_superblocks(block_bytes: usize, bytes: &[u8], acts: Q8Ref<'_>) -> usize {
    (bytes.len() / block_bytes)
        .min(acts.qs.len() / QK_K)
        .min(acts.d.len() / CHUNKS)
        .min(acts.sum16.len() / (QK_K / 16))
}

/// Q4_K/Q5_K's eight 6-bit scales and eight 6-bit mins from their 12 packed bytes, as ggml's
/// AVX2 kernels unpack them (`utmp`, `kmask1..3`), from the bytes as three little-endian words:
/// words 0–1 of the result are the scales, words 2–3 the mins. Equal to `get_scale_min_k4(j)` for every `j`.
#[inline(always)]
fn k4_scales_mins(w: [u32; 3]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let [w0, w1, w2] = w;
    [
        w0 & KMASK1,
        (w2 & KMASK2) | (((w0 >> 6) & KMASK3) << 4),
        w1 & KMASK1,
        ((w2 >> 4) & KMASK2) | (((w1 >> 6) & KMASK3) << 4),
    ]
}

/// Q3_K's sixteen 6-bit scales from their 12 packed bytes, still offset by 32 (ggml's `kmask1` /
/// `kmask2` shuffle, as in `reference.rs`): little-endian words 0–3, byte `g` is group `g`'s.
#[inline(always)]
fn q3_k_scales(s: &[u8]) -> [u32; 4] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let s = &s[..12];
    let w = |k: usize| u32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]);
    let (w0, w1, w2) = (w(0), w(1), w(2));
    [
        (w0 & KMASK2) | ((w2 & KMASK1) << 4),
        (w1 & KMASK2) | (((w2 >> 2) & KMASK1) << 4),
        ((w0 >> 4) & KMASK2) | (((w2 >> 4) & KMASK1) << 4),
        ((w1 >> 4) & KMASK2) | (((w2 >> 6) & KMASK1) << 4),
    ]
}

/// Twelve bytes as three little-endian words.
#[inline(always)]
fn words3(s: &[u8]) -> [u32; 3] {
    let s = &s[..12];
    std::array::from_fn(|k| u32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]))
}

/// The bytes of four little-endian words.
#[inline(always)]
fn bytes16(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(w) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Portable
// ---------------------------------------------------------------------------------------------

/// One super-block's activations: 256 quants, 8 scales, 16 group sums.
struct Acts<'a> {
    y: &'a [i8],    // (256)
    d: &'a [f32],   // (8)
    s16: &'a [i16], // (16)
}

#[inline(always)]
fn acts_at(acts: Q8Ref<'_>, i: usize) -> Acts<'_> {
    Acts {
        y: &acts.qs[QK_K * i..][..QK_K],
        d: &acts.d[CHUNKS * i..][..CHUNKS],
        s16: &acts.sum16[16 * i..][..16],
    }
}

/// `Σ q_i·y_i` over a group of 16 (or a chunk of 32), `q` unsigned.
#[inline(always)]
fn idot(q: impl Iterator<Item = u8>, y: &[i8]) -> i32 {
    q.zip(y).map(|(q, &y)| q as i32 * y as i32).sum()
}

/// The two group sums of chunk `c`, `S_2c + S_2c+1`.
#[inline(always)]
fn chunk_sum(a: &Acts<'_>, c: usize) -> i32 {
    a.s16[2 * c] as i32 + a.s16[2 * c + 1] as i32
}

/// `block_q4_K { d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }` (144 bytes): chunk `c` is
/// the low (`c` even) or high (`c` odd) nibbles of `qs[32 (c / 2) ..][..32]`.
fn dot_q4_k(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    const BYTES: usize = 144;
    let mut acc = 0f32;
    for i in 0..whole_superblocks(BYTES, row, acts) {
        let b = &row[BYTES * i..][..BYTES];
        let a = acts_at(acts, i);
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let sm = bytes16(k4_scales_mins(words3(&b[4..16])));
        for c in 0..CHUNKS {
            let q = &b[16 + 32 * (c / 2)..][..32];
            let shift = 4 * (c % 2);
            let qy = idot(q.iter().map(|&q| (q >> shift) & 0x0F), &a.y[32 * c..][..32]);
            let (sc, m) = (sm[c] as i32, sm[8 + c] as i32);
            acc += a.d[c] * (d * (sc * qy) as f32 - dmin * (m * chunk_sum(&a, c)) as f32);
        }
    }
    acc
}

/// `block_q5_K { d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }` (176 bytes):
/// Q4_K's nibbles plus a fifth bit, bit `c` of `qh[l]`, worth 16.
fn dot_q5_k(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    const BYTES: usize = 176;
    let mut acc = 0f32;
    for i in 0..whole_superblocks(BYTES, row, acts) {
        let b = &row[BYTES * i..][..BYTES];
        let a = acts_at(acts, i);
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let sm = bytes16(k4_scales_mins(words3(&b[4..16])));
        let qh = &b[16..48];
        for c in 0..CHUNKS {
            let q = &b[48 + 32 * (c / 2)..][..32];
            let shift = 4 * (c % 2);
            let quants = q
                .iter()
                .zip(qh)
                .map(|(&q, &h)| ((q >> shift) & 0x0F) | (((h >> c) & 1) << 4));
            let qy = idot(quants, &a.y[32 * c..][..32]);
            let (sc, m) = (sm[c] as i32, sm[8 + c] as i32);
            acc += a.d[c] * (d * (sc * qy) as f32 - dmin * (m * chunk_sum(&a, c)) as f32);
        }
    }
    acc
}

/// `block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }` (210 bytes). Chunk
/// `c = 4h + k`: low 4 bits are nibble `k / 2` of `ql[64h + 32 (k % 2) ..][..32]`, high 2 bits
/// are bits `2k ..` of `qh[32h ..][..32]`; `w = d·sc_g·(q − 32)`.
fn dot_q6_k(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    const BYTES: usize = 210;
    let mut acc = 0f32;
    for i in 0..whole_superblocks(BYTES, row, acts) {
        let b = &row[BYTES * i..][..BYTES];
        let a = acts_at(acts, i);
        let d = f16_at(b, 208);
        let scales = &b[192..208];
        for c in 0..CHUNKS {
            let (h, k) = (c / 4, c % 4);
            let low = &b[64 * h + 32 * (k % 2)..][..32];
            let high = &b[128 + 32 * h..][..32];
            let (low_shift, high_shift) = (4 * (k / 2), 2 * k);
            let mut chunk = 0i32; // Σ_g sc_g·(Σ q y − 32·S_g)
            for g in 0..2 {
                let l = 16 * g..16 * g + 16;
                let quants = low[l.clone()]
                    .iter()
                    .zip(&high[l.clone()])
                    .map(|(&lo, &hi)| ((lo >> low_shift) & 0x0F) | (((hi >> high_shift) & 3) << 4));
                let qy = idot(quants, &a.y[32 * c + 16 * g..][..16]);
                let group = 2 * c + g;
                chunk += scales[group] as i8 as i32 * (qy - 32 * a.s16[group] as i32);
            }
            acc += a.d[c] * d * chunk as f32;
        }
    }
    acc
}

/// `block_q3_K { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }` (110 bytes). Chunk
/// `c`: low 2 bits are bits `2 (c % 4)` of `qs[32 (c / 4) ..][..32]`, bit 2 is bit `c` of
/// `hmask[l]`; `w = d·(sc_g − 32)·(q − 4)`.
fn dot_q3_k(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    const BYTES: usize = 110;
    let mut acc = 0f32;
    for i in 0..whole_superblocks(BYTES, row, acts) {
        let b = &row[BYTES * i..][..BYTES];
        let a = acts_at(acts, i);
        let d = f16_at(b, 108);
        let scales = bytes16(q3_k_scales(&b[96..108]));
        let hmask = &b[0..32];
        for c in 0..CHUNKS {
            let q = &b[32 + 32 * (c / 4)..][..32];
            let shift = 2 * (c % 4);
            let mut chunk = 0i32; // Σ_g (sc_g − 32)·(Σ q y − 4·S_g)
            for g in 0..2 {
                let l = 16 * g..16 * g + 16;
                let quants = q[l.clone()]
                    .iter()
                    .zip(&hmask[l])
                    .map(|(&q, &h)| ((q >> shift) & 3) | (((h >> c) & 1) << 2));
                let qy = idot(quants, &a.y[32 * c + 16 * g..][..16]);
                let group = 2 * c + g;
                chunk += (scales[group] as i32 - 32) * (qy - 4 * a.s16[group] as i32);
            }
            acc += a.d[c] * d * chunk as f32;
        }
    }
    acc
}

/// `block_q2_K { scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 }` (84 bytes). Chunk `c`:
/// bits `2 (c % 4)` of `qs[32 (c / 4) ..][..32]`; scale byte `g` holds `sc_g` (low nibble) and
/// `m_g` (high nibble); `w = d·sc_g·q − dmin·m_g`.
fn dot_q2_k(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    const BYTES: usize = 84;
    let mut acc = 0f32;
    for i in 0..whole_superblocks(BYTES, row, acts) {
        let b = &row[BYTES * i..][..BYTES];
        let a = acts_at(acts, i);
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        let scales = &b[0..16];
        for c in 0..CHUNKS {
            let q = &b[16 + 32 * (c / 4)..][..32];
            let shift = 2 * (c % 4);
            let (mut sums, mut mins) = (0i32, 0i32); // Σ_g sc_g·Σ q y, Σ_g m_g·S_g
            for g in 0..2 {
                let quants = q[16 * g..16 * g + 16].iter().map(|&q| (q >> shift) & 3);
                let qy = idot(quants, &a.y[32 * c + 16 * g..][..16]);
                let group = 2 * c + g;
                sums += (scales[group] & 0x0F) as i32 * qy;
                mins += (scales[group] >> 4) as i32 * a.s16[group] as i32;
            }
            acc += a.d[c] * (d * sums as f32 - dmin * mins as f32);
        }
    }
    acc
}
