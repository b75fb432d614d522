//! 512-bit many-rows integer dots of the legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with 8-bit
//! activations: two blocks per `zmm`, eight blocks per step. Same arithmetic as `legacy_q8.rs`
//! (ggml's `ggml_vec_dot_q*_q8_*`), computed with fewer instructions per block than the 256-bit
//! kernels of the parent module, whose two- and one-block steps finish each row.
//!
//! Per step of eight blocks and one row:
//! - quants: one masked 64-byte load covers two adjacent 4/5-bit blocks (masked lanes never
//!   fault), `vpermb` places each block's 16 packed bytes twice, `vpsrlvw` + and give the low
//!   nibbles then the high ones, in element order; the Q5 fifth bits are one byte-masked add (the
//!   two blocks' `qh` words form the mask). Q8_0's signed quants get +128 (a xor), so every format
//!   feeds unsigned bytes into `vpdpbusd` and the offset `OFFSET·S_b` (8, 16 or 128 times the
//!   activations' block sum) is subtracted in i32, exactly;
//! - four `vpdpbusd` and a transpose-add tree leave the eight block sums in one `ymm`, in the
//!   block order `[0 2 4 6 1 3 5 7]`; the activations' scales and sums are permuted to that
//!   order once per step for all four rows;
//! - the eight weight scales (and Q4_1/Q5_1 minimums) are read as halves into that order (a
//!   `vpgatherdd` of each block's first four bytes measured no faster, and gathers are slow on
//!   AMD), then one conversion and two FMAs (three with a minimum).
//!
//! Needs AVX512-F/BW/VL, AVX512-VNNI and AVX512-VBMI (Ice Lake, Sapphire Rapids, Zen 4/5).

use super::{halves4, step1, step2, Acc, Blocks, Format, Q40, Q41, Q50, Q51, Q80};
use super::{hsum_ps, whole_blocks, Avx512Vnni, DType, DotQ8Gather, DotQ8Rows, Q8Ref, Q8_BLOCK};
use std::arch::is_x86_feature_detected as has;
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels of this file.
pub(super) fn detected() -> bool {
    has!("avx2") && has!("fma") && has!("f16c")
        && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") && has!("avx512vbmi")
}

/// The many-rows kernel of `dtype` (see [`DotQ8Rows`]); call only when [`detected`].
pub(super) fn rows(dtype: DType) -> Option<DotQ8Rows> {
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    unsafe fn dot<F: ZFormat>(w: &[u8], row_bytes: usize, acts: Q8Ref<'_>, out: &mut [f32]) {
        // SAFETY: the features `dot_rows` needs are enabled here.
        unsafe { dot_rows::<F>(w, row_bytes, acts, out) }
    }
    // SAFETY (each closure): reachable only through callers that checked `detected`.
    let dot: DotQ8Rows = match dtype {
        DType::Q4_0 => |w, n, a, o| unsafe { dot::<Q40>(w, n, a, o) },
        DType::Q4_1 => |w, n, a, o| unsafe { dot::<Q41>(w, n, a, o) },
        DType::Q5_0 => |w, n, a, o| unsafe { dot::<Q50>(w, n, a, o) },
        DType::Q5_1 => |w, n, a, o| unsafe { dot::<Q51>(w, n, a, o) },
        DType::Q8_0 => |w, n, a, o| unsafe { dot::<Q80>(w, n, a, o) },
        _ => return None,
    };
    Some(dot)
}

/// The subset-of-rows kernel of `dtype` (see [`DotQ8Gather`]); call only when [`detected`].
pub(super) fn gather(dtype: DType) -> Option<DotQ8Gather> {
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    unsafe fn dot<F: ZFormat>(w: &[u8], row_bytes: usize, rows: &[u32], acts: Q8Ref<'_>, out: &mut [f32]) {
        // SAFETY: the features `dot_gather` needs are enabled here.
        unsafe { dot_gather::<F>(w, row_bytes, rows, acts, out) }
    }
    // SAFETY (each closure): reachable only through callers that checked `detected`.
    let dot: DotQ8Gather = match dtype {
        DType::Q4_0 => |w, n, r, a, o| unsafe { dot::<Q40>(w, n, r, a, o) },
        DType::Q4_1 => |w, n, r, a, o| unsafe { dot::<Q41>(w, n, r, a, o) },
        DType::Q5_0 => |w, n, r, a, o| unsafe { dot::<Q50>(w, n, r, a, o) },
        DType::Q5_1 => |w, n, r, a, o| unsafe { dot::<Q51>(w, n, r, a, o) },
        DType::Q8_0 => |w, n, r, a, o| unsafe { dot::<Q80>(w, n, r, a, o) },
        _ => return None,
    };
    Some(dot)
}

/// A legacy format as read two blocks at a time.
trait ZFormat: Format {
    /// `Σ_j w_j y_j = d·(Σ_j q_j y_j − OFFSET·S)` (+ `m·S` with a minimum), `q_j` unsigned.
    const Z_OFFSET: i32;
    /// The 64 unsigned quants of the two blocks at `p`, in element order.
    ///
    /// # Safety
    /// `p` points to two whole blocks; the features of [`rows`] are present.
    unsafe fn quants2(p: *const u8) -> __m512i;
}

/// `vpermb` indices placing the 16 packed bytes at `qs_at` of two blocks of `bytes` twice each:
/// `[A A B B]` by 128-bit lane.
const fn nibble_index(bytes: usize, qs_at: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        idx[i] = ((i / 32) * bytes + qs_at + i % 16) as u8;
        i += 1;
    }
    idx
}

/// The 64 nibbles of two 4-bit blocks of `BYTES` bytes at `p`, their packed bytes at `QS_AT`:
/// low nibbles are elements 0..16 of a block, high nibbles 16..32.
#[inline(always)]
unsafe fn nibbles2<const BYTES: usize, const QS_AT: usize>(p: *const u8) -> __m512i {
    let idx = const { nibble_index(BYTES, QS_AT) };
    // SAFETY: the caller guarantees the two blocks (2·BYTES ≤ 48 bytes) are readable; the
    // masked-off bytes of the load are never accessed.
    unsafe {
        let raw = _mm512_maskz_loadu_epi8((1u64 << (2 * BYTES)) - 1, p.cast());
        let placed = _mm512_permutexvar_epi8(_mm512_loadu_si512(idx.as_ptr().cast()), raw);
        // Shift the second 16 bytes of each block (its high nibbles) by 4.
        let shifts = _mm512_set_epi64(0x0004_0004_0004_0004, 0x0004_0004_0004_0004, 0, 0, 0x0004_0004_0004_0004, 0x0004_0004_0004_0004, 0, 0);
        _mm512_and_si512(_mm512_srlv_epi16(placed, shifts), _mm512_set1_epi8(0x0F))
    }
}

/// [`nibbles2`] plus the fifth bits: bit `j` of the little-endian `qh` (4 bytes at `QH_AT`)
/// belongs to element `j`; the packed nibbles follow `qh`.
#[inline(always)]
unsafe fn quants5_2<const BYTES: usize, const QH_AT: usize, const QS_AT: usize>(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees the two blocks are readable.
    unsafe {
        let qh = |k: usize| u32::from_le(p.add(k * BYTES + QH_AT).cast::<u32>().read_unaligned()) as u64;
        let nib = nibbles2::<BYTES, QS_AT>(p);
        _mm512_mask_add_epi8(nib, qh(0) | qh(1) << 32, nib, _mm512_set1_epi8(0x10))
    }
}

impl ZFormat for Q40 {
    const Z_OFFSET: i32 = 8;
    #[inline(always)]
    unsafe fn quants2(p: *const u8) -> __m512i {
        // SAFETY: forwarded to the caller; `qs` is bytes 2..18 of a block.
        unsafe { nibbles2::<18, 2>(p) }
    }
}

impl ZFormat for Q41 {
    const Z_OFFSET: i32 = 0;
    #[inline(always)]
    unsafe fn quants2(p: *const u8) -> __m512i {
        // SAFETY: forwarded to the caller; `qs` is bytes 4..20 of a block.
        unsafe { nibbles2::<20, 4>(p) }
    }
}

impl ZFormat for Q50 {
    const Z_OFFSET: i32 = 16;
    #[inline(always)]
    unsafe fn quants2(p: *const u8) -> __m512i {
        // SAFETY: forwarded to the caller; `qh` is bytes 2..6, `qs` 6..22 of a block.
        unsafe { quants5_2::<22, 2, 6>(p) }
    }
}

impl ZFormat for Q51 {
    const Z_OFFSET: i32 = 0;
    #[inline(always)]
    unsafe fn quants2(p: *const u8) -> __m512i {
        // SAFETY: forwarded to the caller; `qh` is bytes 4..8, `qs` 8..24 of a block.
        unsafe { quants5_2::<24, 4, 8>(p) }
    }
}

impl ZFormat for Q80 {
    const Z_OFFSET: i32 = 128;
    #[inline(always)]
    unsafe fn quants2(p: *const u8) -> __m512i {
        // SAFETY: forwarded to the caller; `qs` is bytes 2..34 of a block.
        unsafe {
            let a = _mm256_loadu_si256(p.add(2).cast());
            let b = _mm256_loadu_si256(p.add(34 + 2).cast());
            // q + 128 as an unsigned byte: the sign bit flipped.
            _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b), _mm512_set1_epi8(-128))
        }
    }
}

/// The block order of a step's sums (see [`fold`]).
const ORDER: [i32; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// What the four rows of a step share: the activations of its eight blocks.
struct StepActs {
    y: [__m512i; 4], // blocks (2k, 2k + 1) in y[k]
    da: __m256,      // activation scales, in ORDER
    offset: __m256i, // Z_OFFSET·S_b, in ORDER
    da_s: __m256,    // d_a·S_b, in ORDER (for the minimums)
}

/// # Safety
/// Blocks `b..b + 8` of `r`'s activations are in bounds; the features of [`rows`] are present.
#[inline(always)]
unsafe fn step_acts<F: ZFormat>(r: Blocks, b: usize) -> StepActs {
    // SAFETY: forwarded to the caller.
    unsafe {
        let order = _mm256_loadu_si256(ORDER.as_ptr().cast());
        let y = four!(|k| _mm512_loadu_si512(r.y.add((b + 2 * k) * Q8_BLOCK).cast()));
        let da = _mm256_permutevar8x32_ps(_mm256_loadu_ps(r.da.add(b)), order);
        let s16 = _mm256_loadu_si256(r.sums.add(2 * b).cast());
        let s = _mm256_permutevar8x32_epi32(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)), order);
        StepActs {
            y,
            da,
            offset: _mm256_mullo_epi32(s, _mm256_set1_epi32(F::Z_OFFSET)),
            da_s: _mm256_mul_ps(da, _mm256_cvtepi32_ps(s)),
        }
    }
}

/// Folds the four `vpdpbusd` results of a step (`p[k]`: blocks `2k` and `2k + 1`, 4 lanes per
/// half block) into the eight block sums, in [`ORDER`].
#[inline(always)]
unsafe fn fold(p: [__m512i; 4]) -> __m256i {
    // A 4×4 transpose-and-add within each 128-bit lane: lane `L` of the result holds, at
    // position `k`, the sum of `p[k]`'s lane `L` (L = 0, 1: block 2k's halves; 2, 3: 2k + 1's).
    let p01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    let p23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
    let t = _mm512_add_epi32(_mm512_unpacklo_epi64(p01, p23), _mm512_unpackhi_epi64(p01, p23));
    // Halves of each block added: lanes 0 and 2 of `u` hold the sums of even and odd blocks.
    let u = _mm512_add_epi32(t, _mm512_shuffle_i32x4::<0b10_11_00_01>(t, t));
    _mm512_castsi512_si256(_mm512_permutexvar_epi64(_mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0), u))
}

/// Blocks `b..b + 8` of one row into `acc`.
///
/// # Safety
/// The eight blocks are in bounds; the features of [`rows`] are present.
#[inline(always)]
unsafe fn step8<F: ZFormat>(w: *const u8, b: usize, a: &StepActs, acc: __m256) -> __m256 {
    // SAFETY: forwarded to the caller.
    unsafe {
        let wb = w.add(b * F::BYTES);
        let p = four!(|k| _mm512_dpbusd_epi32(_mm512_setzero_si512(), F::quants2(wb.add(2 * k * F::BYTES)), a.y[k]));
        let mut sums = fold(p);
        if F::Z_OFFSET != 0 {
            sums = _mm256_sub_epi32(sums, a.offset);
        }
        let d = _mm256_set_m128(halves4(wb.add(F::BYTES), 2 * F::BYTES, 0), halves4(wb, 2 * F::BYTES, 0));
        let mut acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(d, a.da), acc);
        if let Some(at) = F::MIN_AT {
            let m = _mm256_set_m128(halves4(wb.add(F::BYTES), 2 * F::BYTES, at), halves4(wb, 2 * F::BYTES, at));
            acc = _mm256_fmadd_ps(m, a.da_s, acc);
        }
        acc
    }
}

/// Rows computed together: they share each step's activations.
const ROWS: usize = 4;

/// How many groups of [`ROWS`] rows ahead the weights are prefetched.
const PREFETCH_GROUPS: usize = 4;

/// `out[i]` = the dot of row `i` (`w[i·row_bytes..]`) with `acts`, for every `i < out.len()`
/// that `w` holds.
///
/// # Safety
/// The features of [`rows`] are present. (Memory safety does not depend on the arguments: only
/// the whole blocks that the rows and `acts` all hold are read.)
#[inline(always)]
unsafe fn dot_rows<F: ZFormat>(w: &[u8], row_bytes: usize, acts: Q8Ref<'_>, out: &mut [f32]) {
    if row_bytes == 0 {
        return out.fill(0.0);
    }
    let n = out.len().min(w.len() / row_bytes);
    for (g, o) in out[..n].chunks_mut(ROWS).enumerate() {
        let first = g * ROWS;
        let rows: [&[u8]; ROWS] = std::array::from_fn(|k| {
            let r = (first + k).min(n - 1); // a short last group repeats its last row
            &w[r * row_bytes..(r + 1) * row_bytes]
        });
        let ahead = rows.map(|row| row.as_ptr().wrapping_add(PREFETCH_GROUPS * ROWS * row_bytes));
        // SAFETY: forwarded to the caller.
        let r = unsafe { dot_rows_at::<F>(rows, ahead, acts) };
        o.copy_from_slice(&r[..o.len()]);
    }
}

/// `out[i]` = the dot of row `rows[i]` of `w` with `acts`: a subset of rows, [`ROWS`] at a
/// time, each group prefetching the rows of the group [`PREFETCH_GROUPS`] ahead in the list. A
/// row `w` does not hold gives 0.
///
/// # Safety
/// As [`dot_rows`].
#[inline(always)]
unsafe fn dot_gather<F: ZFormat>(w: &[u8], row_bytes: usize, rows: &[u32], acts: Q8Ref<'_>, out: &mut [f32]) {
    let held = if row_bytes == 0 { 0 } else { w.len() / row_bytes };
    let row = |i: u32| -> Option<&[u8]> {
        let i = i as usize;
        (i < held).then(|| &w[i * row_bytes..(i + 1) * row_bytes])
    };
    let n = out.len().min(rows.len());
    for (g, o) in out[..n].chunks_mut(ROWS).enumerate() {
        let ids = &rows[g * ROWS..(g * ROWS + ROWS).min(n)];
        // A short last group repeats its last row.
        let four: [Option<&[u8]>; ROWS] = std::array::from_fn(|k| row(ids[k.min(ids.len() - 1)]));
        if four.iter().any(Option::is_none) {
            // A row past the end: each row on its own, the missing ones 0.
            for (ok, &i) in o.iter_mut().zip(ids) {
                // SAFETY: forwarded to the caller.
                *ok = row(i).map_or(0.0, |rk| unsafe { dot_rows_at::<F>([rk; ROWS], [rk.as_ptr(); ROWS], acts)[0] });
            }
            continue;
        }
        let four = four.map(Option::unwrap_or_default);
        let next = rows.get((g + PREFETCH_GROUPS) * ROWS..((g + PREFETCH_GROUPS + 1) * ROWS).min(n));
        let ahead: [*const u8; ROWS] =
            std::array::from_fn(|k| next.and_then(|ids| ids.get(k)).and_then(|&i| row(i)).map_or(four[k].as_ptr(), |r| r.as_ptr()));
        // SAFETY: forwarded to the caller.
        let r = unsafe { dot_rows_at::<F>(four, ahead, acts) };
        o.copy_from_slice(&r[..o.len()]);
    }
}

/// The dots of four rows of equal length; `ahead[k]` is where the lines to prefetch while
/// computing row `k` start (any address: prefetches never fault).
///
/// # Safety
/// As [`dot_rows`].
#[inline(always)]
unsafe fn dot_rows_at<F: ZFormat>(rows: [&[u8]; ROWS], ahead: [*const u8; ROWS], acts: Q8Ref<'_>) -> [f32; ROWS] {
    let nb = rows.iter().map(|r| whole_blocks(F::BYTES, r, acts)).min().unwrap_or(0);
    let r = rows.map(|row| Blocks { w: row.as_ptr(), y: acts.qs.as_ptr(), da: acts.d.as_ptr(), sums: acts.sum16.as_ptr() });
    let mut acc = [_mm256_setzero_ps(); ROWS];
    let mut b = 0;
    // SAFETY: every step reads blocks `b..b + n` with `b + n <= nb`, which every row and `acts`
    // hold (`whole_blocks`).
    unsafe {
        while b + 8 <= nb {
            let a = step_acts::<F>(r[0], b);
            for k in 0..ROWS {
                // The stream of weights is requested early enough to hide the memory latency.
                crate::quant::prefetch_lines(ahead[k].wrapping_add(b * F::BYTES), 8 * F::BYTES);
                acc[k] = step8::<F>(r[k].w, b, &a, acc[k]);
            }
            b += 8;
        }
        let mut tail = [Acc { sum: _mm256_setzero_ps(), min: _mm_setzero_ps() }; ROWS];
        while b + 2 <= nb {
            for k in 0..ROWS {
                tail[k] = step2::<F, Avx512Vnni>(r[k], b, tail[k]);
            }
            b += 2;
        }
        let mut out = [0.0f32; ROWS];
        for k in 0..ROWS {
            let last = if b < nb { step1::<F, Avx512Vnni>(r[k], b) } else { 0.0 };
            out[k] = hsum_ps(_mm256_add_ps(acc[k], tail[k].sum), tail[k].min) + last;
        }
        out
    }
}
