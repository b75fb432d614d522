//! x86-64 integer dots of the k-quant formats with 8-bit activations: ggml's AVX2
//! `ggml_vec_dot_q*_K_q8_K` (`ggml-cpu/arch/x86/quants.c`), adapted to one activation scale per
//! 32 elements (see `kquants_q8.rs` for the arithmetic).
//!
//! One generic body per format over a [`Madd`] (how unsigned × signed bytes are multiplied and
//! summed), instantiated in three `#[target_feature]` copies:
//! - `avx2`: `vpmaddubsw` (u8·i8 pairs → i16) and `vpmaddwd` (i16 pairs → i32);
//! - `avx512vnni`: `vpdpbusd` on 256-bit vectors (AVX512-VNNI + AVX512-VL: Zen 4/5, Ice Lake+);
//! - `avxvnni`: the VEX-encoded `vpdpbusd` (AVX-VNNI: Alder Lake+, Zen 5).
//!
//! A super-block is decoded into eight vectors of 32 unsigned quants, one per chunk (activation
//! block). Four chunks' byte dots are folded by a transpose-add tree ([`Madd::dot4`]) into one
//! vector whose lane `j` / `j + 4` holds the sum over the first / last 16 elements of chunk `j`,
//! i.e. one lane per group of 16. The per-16 formats (Q6_K, Q3_K, Q2_K) multiply those lanes by
//! their scales in the integer domain (`vpmulld`, scales shuffled to the same lane order); then
//! the two halves of both vectors are added into eight chunk sums, from which the offsets
//! `o·(sc_2c·S_2c + sc_2c+1·S_2c+1)` (one `vpmaddwd` of `sum16`) are subtracted, still exactly.
//! Q4_K/Q5_K add the halves directly and apply their per-chunk scales in f32. Either way a whole
//! super-block costs one int→float conversion and one FMA against `d·d_a,c` (plus one of each
//! for the minimums of Q4_K, Q5_K and Q2_K, whose `dmin·m·S` also comes from `sum16`).
//!
//! Each format's extra work was timed on the development machine (AVX2 only, in-cache rows):
//! unpacking Q4_K's scales with vector shuffles rather than scalar shifts, and the integer
//! scaling of the per-16 formats, each gained 6–14 %.
//!
//! 512-bit versions are not written: the machine this was developed on exposes no AVX-512 (nor
//! AVX-VNNI) to its guest, so they could be neither timed nor run there. The `vpdpbusd` copies
//! share every line but [`Madd::dot`] with the AVX2 one; the unit tests below run that shared
//! code with an exact AVX2 emulation of `vpdpbusd`.

use super::{k4_scales_mins, q3_k_scales, whole_superblocks, DType, DotQ8, DotQ8Rows, Q8Ref, CHUNKS, QK_K};
use std::arch::x86_64::*;
use crate::quant::x86_level::{best_level, Level};

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

/// This family's kernels for an instruction-set level.
fn kernel(level: Level, dtype: DType) -> Option<DotQ8> {
    match level {
        Level::Avx512Vnni => avx512vnni(dtype),
        Level::AvxVnni => avxvnni(dtype),
        Level::Avx2 => avx2(dtype),
    }
}

pub(super) fn best(dtype: DType) -> Option<DotQ8> {
    kernel(best_level()?, dtype)
}

/// This family's many-rows kernels for an instruction-set level.
fn rows_kernel(level: Level, dtype: DType) -> Option<DotQ8Rows> {
    match level {
        Level::Avx512Vnni => avx512vnni_rows(dtype),
        Level::AvxVnni => avxvnni_rows(dtype),
        Level::Avx2 => avx2_rows(dtype),
    }
}

/// The many-rows kernel of the best level (see [`DotQ8Rows`]).
pub(super) fn best_rows(dtype: DType) -> Option<DotQ8Rows> {
    rows_kernel(best_level()?, dtype)
}

/// Every detected level's many-rows kernel, named. For tests.
pub(super) fn rows_variants(dtype: DType) -> Vec<(&'static str, DotQ8Rows)> {
    Level::ALL
        .into_iter()
        .rev()
        .filter(|l| l.detected())
        .filter_map(|l| Some((l.name(), rows_kernel(l, dtype)?)))
        .collect()
}

pub(super) fn variants(dtype: DType) -> Vec<(&'static str, DotQ8)> {
    Level::ALL
        .into_iter()
        .rev()
        .filter(|l| l.detected())
        .filter_map(|l| Some((l.name(), kernel(l, dtype)?)))
        .collect()
}

/// `fn $name(dtype) -> Option<DotQ8>` and `fn $rows(dtype) -> Option<DotQ8Rows>`: the five
/// kernels compiled with `$features`, using `$madd`, one row per call and many rows per call
/// (a loop over rows inside the compiled function: no call per row). Call them only once
/// `$features` were detected.
macro_rules! kernel_set {
    ($name:ident, $rows:ident, $madd:ty, $features:literal) => {
        kernel_set!($name, $madd, $features);

        fn $rows(dtype: DType) -> Option<DotQ8Rows> {
            #[target_feature(enable = $features)]
            unsafe fn dot<F: Format>(w: &[u8], row_bytes: usize, acts: Q8Ref<'_>, out: &mut [f32]) {
                for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes.max(1))) {
                    prefetch_ahead(row, PREFETCH_ROWS * row_bytes);
                    // SAFETY: as in `$name`.
                    *o = unsafe { F::dot::<$madd>(row, acts) };
                }
            }
            // SAFETY (each closure): reachable only through `best_rows`/`rows_variants`, called
            // for levels whose features `Level::detected` confirmed.
            let dot: DotQ8Rows = match dtype {
                DType::Q2_K => |w, n, a, o| unsafe { dot::<Q2K>(w, n, a, o) },
                DType::Q3_K => |w, n, a, o| unsafe { dot::<Q3K>(w, n, a, o) },
                DType::Q4_K => |w, n, a, o| unsafe { dot::<Q4K>(w, n, a, o) },
                DType::Q5_K => |w, n, a, o| unsafe { dot::<Q5K>(w, n, a, o) },
                DType::Q6_K => |w, n, a, o| unsafe { dot::<Q6K>(w, n, a, o) },
                _ => return None,
            };
            Some(dot)
        }
    };
    ($name:ident, $madd:ty, $features:literal) => {
        fn $name(dtype: DType) -> Option<DotQ8> {
            #[target_feature(enable = $features)]
            unsafe fn dot<F: Format>(row: &[u8], acts: Q8Ref<'_>) -> f32 {
                // SAFETY: `F::dot` needs the features of `$madd` and AVX2/FMA/F16C, all enabled
                // here.
                unsafe { F::dot::<$madd>(row, acts) }
            }
            // SAFETY (each closure): reachable only through `kernel` (or the tests), called
            // for levels whose features `Level::detected` confirmed.
            let dot: DotQ8 = match dtype {
                DType::Q2_K => |r, a| unsafe { dot::<Q2K>(r, a) },
                DType::Q3_K => |r, a| unsafe { dot::<Q3K>(r, a) },
                DType::Q4_K => |r, a| unsafe { dot::<Q4K>(r, a) },
                DType::Q5_K => |r, a| unsafe { dot::<Q5K>(r, a) },
                DType::Q6_K => |r, a| unsafe { dot::<Q6K>(r, a) },
                _ => return None,
            };
            Some(dot)
        }
    };
}

/// How many rows ahead the many-rows kernels prefetch: the weights stream from memory, and the
/// requests go out early enough to hide its latency.
const PREFETCH_ROWS: usize = 4;

/// Asks for the cache lines of the row `distance` bytes after `row` (prefetches never fault).
#[inline(always)]
fn prefetch_ahead(row: &[u8], distance: usize) {
    crate::quant::prefetch_lines(row.as_ptr().wrapping_add(distance), row.len());
}

kernel_set!(avx2, avx2_rows, Avx2, "avx2,fma,f16c");
kernel_set!(avx512vnni, avx512vnni_rows, Avx512Vnni, "avx2,fma,f16c,avx512vnni,avx512vl");
kernel_set!(avxvnni, avxvnni_rows, AvxVnni, "avx2,fma,f16c,avxvnni");

// ---------------------------------------------------------------------------------------------
// Multiply-add of bytes
// ---------------------------------------------------------------------------------------------

/// Unsigned × signed byte products, summed. Implementations are only run inside functions that
/// enable their instruction sets (see `kernel_set!`).
trait Madd {
    /// 8 i32 lanes, lane `k` = `Σ_{i<4} u[4k+i]·s[4k+i]` (bytes of `u` ≤ 63).
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;

    /// Four chunks folded: lane `j` = `Σ_{i<16} u_j[i]·s_j[i]`, lane `j + 4` the same over
    /// `16 ≤ i < 32`. Bytes of `u` ≤ 63 (≤ 31 when `small`, a constant after inlining), of `s`
    /// in −128..=127.
    #[inline(always)]
    unsafe fn dot4(u: [__m256i; 4], s: [__m256i; 4], _small: bool) -> __m256i {
        // SAFETY: forwarded to the caller.
        unsafe {
            tree([
                Self::dot(u[0], s[0]),
                Self::dot(u[1], s[1]),
                Self::dot(u[2], s[2]),
                Self::dot(u[3], s[3]),
            ])
        }
    }
}

/// `vpmaddubsw` + `vpmaddwd` (needs AVX2).
struct Avx2;

impl Madd for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        // |pair| ≤ 2·63·128 = 16128: no saturation.
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    /// The tree on the i16 pair sums before widening. A pair is at most 2·63·128 = 16128 in
    /// magnitude, so two can be added in i16 (32256 < 32767); with `u` ≤ 31 a pair is at most
    /// 7936 and four can, so one `vpmaddwd` serves four chunks.
    #[inline(always)]
    unsafe fn dot4(u: [__m256i; 4], s: [__m256i; 4], small: bool) -> __m256i {
        let m = [
            _mm256_maddubs_epi16(u[0], s[0]),
            _mm256_maddubs_epi16(u[1], s[1]),
            _mm256_maddubs_epi16(u[2], s[2]),
            _mm256_maddubs_epi16(u[3], s[3]),
        ];
        let ones = _mm256_set1_epi16(1);
        let m01 = _mm256_add_epi16(_mm256_unpacklo_epi32(m[0], m[1]), _mm256_unpackhi_epi32(m[0], m[1]));
        let m23 = _mm256_add_epi16(_mm256_unpacklo_epi32(m[2], m[3]), _mm256_unpackhi_epi32(m[2], m[3]));
        if small {
            let t = _mm256_add_epi16(_mm256_unpacklo_epi64(m01, m23), _mm256_unpackhi_epi64(m01, m23));
            _mm256_madd_epi16(t, ones)
        } else {
            let (w01, w23) = (_mm256_madd_epi16(m01, ones), _mm256_madd_epi16(m23, ones));
            _mm256_add_epi32(_mm256_unpacklo_epi64(w01, w23), _mm256_unpackhi_epi64(w01, w23))
        }
    }
}

/// `vpdpbusd`, EVEX-encoded on 256 bits (needs AVX512-VNNI and AVX512-VL).
struct Avx512Vnni;

impl Madd for Avx512Vnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
}

/// `vpdpbusd`, VEX-encoded (needs AVX-VNNI).
struct AvxVnni;

impl Madd for AvxVnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }
}

/// Folds four 8-lane vectors `p_j` into one: lane `j` = `Σ_{k<4} p_j[k]`, lane `j + 4` =
/// `Σ_{k≥4} p_j[k]` (a 4×4 transpose-and-add within each 128-bit half).
#[inline(always)]
unsafe fn tree(p: [__m256i; 4]) -> __m256i {
    let p01 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[0], p[1]), _mm256_unpackhi_epi32(p[0], p[1]));
    let p23 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2], p[3]), _mm256_unpackhi_epi32(p[2], p[3]));
    _mm256_add_epi32(_mm256_unpacklo_epi64(p01, p23), _mm256_unpackhi_epi64(p01, p23))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The eight f32 lanes of `v`, summed.
#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_movehdup_ps(x));
    _mm_cvtss_f32(x)
}

/// The f16 at `p`, as f32 in all eight lanes (F16C).
#[inline(always)]
unsafe fn half8(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let h = unsafe { p.cast::<u16>().read_unaligned() };
    _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// 32 bytes at `p`.
#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`; `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// The eight chunks of activation quants at `y`.
#[inline(always)]
unsafe fn load_acts(y: *const i8) -> [__m256i; 8] {
    let y = y.cast::<u8>();
    // SAFETY: the caller guarantees 256 readable bytes at `y`.
    unsafe {
        [
            load(y),
            load(y.add(32)),
            load(y.add(64)),
            load(y.add(96)),
            load(y.add(128)),
            load(y.add(160)),
            load(y.add(192)),
            load(y.add(224)),
        ]
    }
}

/// The scales of 16 groups in the lane order of [`Madd::dot4`]: byte indices
/// `[0 2 4 6 1 3 5 7 8 10 12 14 9 11 13 15]`, so that half `h` of the result, widened to eight
/// lanes, matches the `dot4` of chunks `4h .. 4h + 4`.
#[inline(always)]
unsafe fn group_order_epi8(v: __m128i) -> __m128i {
    _mm_shuffle_epi8(v, _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15))
}

/// Bit `c` of every byte of `v`, moved to bit `to` (0..8) and isolated.
#[inline(always)]
unsafe fn bit_to<const TO: i32>(v: __m256i, c: usize) -> __m256i {
    // Each arm moves whole bytes' bits by at most 7 within 16-bit lanes; the mask drops what
    // crossed from the neighbouring byte.
    let s = c as i32 - TO;
    let shifted = match s {
        -7 => _mm256_slli_epi16::<7>(v),
        -6 => _mm256_slli_epi16::<6>(v),
        -5 => _mm256_slli_epi16::<5>(v),
        -4 => _mm256_slli_epi16::<4>(v),
        -3 => _mm256_slli_epi16::<3>(v),
        -2 => _mm256_slli_epi16::<2>(v),
        -1 => _mm256_slli_epi16::<1>(v),
        0 => v,
        1 => _mm256_srli_epi16::<1>(v),
        2 => _mm256_srli_epi16::<2>(v),
        3 => _mm256_srli_epi16::<3>(v),
        4 => _mm256_srli_epi16::<4>(v),
        5 => _mm256_srli_epi16::<5>(v),
        6 => _mm256_srli_epi16::<6>(v),
        _ => _mm256_srli_epi16::<7>(v),
    };
    _mm256_and_si256(shifted, _mm256_set1_epi8(1 << TO))
}

/// Bits `2k, 2k + 1` of every byte of `v`, as the value 0..=3.
#[inline(always)]
unsafe fn crumb(v: __m256i, k: usize) -> __m256i {
    let shifted = match k {
        0 => v,
        1 => _mm256_srli_epi16::<2>(v),
        2 => _mm256_srli_epi16::<4>(v),
        _ => _mm256_srli_epi16::<6>(v),
    };
    _mm256_and_si256(shifted, _mm256_set1_epi8(3))
}

/// The low (`HIGH = false`) or high nibbles of `v`.
#[inline(always)]
unsafe fn nibble<const HIGH: bool>(v: __m256i) -> __m256i {
    let v = if HIGH { _mm256_srli_epi16::<4>(v) } else { v };
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------
//
// Everything below is `#[inline(always)]` functions and trait methods, no closures: closures
// (`std::array::from_fn` included) are not always inlined into the `#[target_feature]` copies,
// and then run their intrinsics as calls.

/// One k-quant format's vector dot.
trait Format {
    /// `Σ_i w_i x_i` for one row against quantized activations.
    ///
    /// # Safety
    /// AVX2, FMA, F16C and the instruction set of `M` are present. (Memory safety does not depend
    /// on the arguments: only the whole super-blocks that `row` and `acts` all hold are read.)
    unsafe fn dot<M: Madd>(row: &[u8], acts: Q8Ref<'_>) -> f32;
}

/// Q4_K and Q5_K: per-32 scales and minimums (6 bits each, packed in bytes 4..16), `d` and
/// `dmin` at bytes 0 and 2: `Σ_c d_a,c·(d·sc_c·Σ q y − dmin·m_c·(S_2c + S_2c+1))`.
trait K4 {
    const BYTES: usize;
    /// Unpack the scales and minimums with vector shuffles (`k4_scales_mins_x86`) rather than
    /// scalar shifts (`k4_scales_mins`): faster where the quants leave the vector ports room
    /// (Q4_K: +10 %), slower where they do not (Q5_K: −8 %).
    const VECTOR_HEADER: bool;
    /// The eight chunks' quants of the super-block at `b`.
    ///
    /// # Safety
    /// `BYTES` readable bytes at `b`; AVX2 is present.
    unsafe fn quants(b: *const u8) -> [__m256i; 8];
}

/// The dot of a [`K4`] format.
///
/// # Safety
/// As [`Format::dot`].
#[inline(always)]
unsafe fn dot_k4<F: K4, M: Madd>(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    let nb = whole_superblocks(F::BYTES, row, acts);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY (all reads below): super-block `i < nb` spans row bytes `BYTES·i ..`,
        // activations `256i ..`, `d[8i .. 8i + 8]` and `sum16[16i .. 16i + 16]`, all in bounds by
        // `whole_superblocks`.
        unsafe {
            let b = row.as_ptr().add(F::BYTES * i);
            let (sc, mins) = if F::VECTOR_HEADER {
                let sm = k4_scales_mins_x86(_mm_loadu_si128(b.add(4).cast()));
                (sm, _mm_unpackhi_epi64(sm, sm))
            } else {
                let w = b.add(4).cast::<u32>();
                let sm = k4_scales_mins([w.read_unaligned(), w.add(1).read_unaligned(), w.add(2).read_unaligned()]);
                let sc = sm[0] as u64 | (sm[1] as u64) << 32;
                let mins = sm[2] as u64 | (sm[3] as u64) << 32;
                (_mm_cvtsi64_si128(sc as i64), _mm_cvtsi64_si128(mins as i64))
            };
            let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc));
            let mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mins));

            let q = F::quants(b);
            let y = load_acts(acts.qs.as_ptr().add(QK_K * i));
            let t0 = M::dot4([q[0], q[1], q[2], q[3]], [y[0], y[1], y[2], y[3]], true);
            let t1 = M::dot4([q[4], q[5], q[6], q[7]], [y[4], y[5], y[6], y[7]], true);
            // Lanes: [t0 low halves | t1 high halves] + [t0 high halves | t1 low halves].
            let chunks = _mm256_add_epi32(
                _mm256_blend_epi32::<0xF0>(t0, t1),
                _mm256_permute2x128_si256::<0x21>(t0, t1),
            );
            let s = _mm256_madd_epi16(load(acts.sum16.as_ptr().add(16 * i).cast()), _mm256_set1_epi16(1));

            // d·sc_c·Σ q y − dmin·m_c·S_c, times d_a,c.
            let (d, dmin) = (half8(b), half8(b.add(2)));
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(chunks), _mm256_mul_ps(sc, d));
            let v = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(mins, dmin), v);
            acc = _mm256_fmadd_ps(v, _mm256_loadu_ps(acts.d.as_ptr().add(CHUNKS * i)), acc);
        }
    }
    // SAFETY: AVX is present (the caller's contract).
    unsafe { hsum_ps(acc) }
}

/// `k4_scales_mins` in vector registers: the 12 packed bytes (the low 12 of `s`) → the eight
/// scales in bytes 0..8 and the eight minimums in bytes 8..16.
#[inline(always)]
unsafe fn k4_scales_mins_x86(s: __m128i) -> __m128i {
    // Bytes [s0..s3, s8..s11, s4..s7, s8..s11]: the low 6 bits of s0..s7 are scales/mins 0..4,
    // the nibbles of s8..s11 the low 4 bits of scales/mins 4..8.
    let t = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    let low = _mm_and_si128(
        t,
        _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0),
    );
    let high_nibbles = _mm_and_si128(
        _mm_srli_epi16::<4>(t),
        _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15),
    );
    // The top 2 bits of s0..s3 (s4..s7) are bits 4 and 5 of scales (mins) 4..8.
    let top = _mm_shuffle_epi8(s, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    let top = _mm_and_si128(_mm_srli_epi16::<2>(top), _mm_set1_epi8(0x30));
    _mm_or_si128(_mm_or_si128(low, high_nibbles), top)
}

/// The low and high nibbles of the four 32-byte vectors at `p`: chunks 0..8 of Q4_K/Q5_K.
///
/// # Safety
/// 128 readable bytes at `p`; AVX2 is present.
#[inline(always)]
unsafe fn nibble_chunks(p: *const u8) -> [__m256i; 8] {
    // SAFETY: forwarded to the caller.
    let qs = unsafe { [load(p), load(p.add(32)), load(p.add(64)), load(p.add(96))] };
    [
        nibble::<false>(qs[0]),
        nibble::<true>(qs[0]),
        nibble::<false>(qs[1]),
        nibble::<true>(qs[1]),
        nibble::<false>(qs[2]),
        nibble::<true>(qs[2]),
        nibble::<false>(qs[3]),
        nibble::<true>(qs[3]),
    ]
}

/// `block_q4_K { d, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`: chunk `c` is the low (`c`
/// even) or high nibbles of `qs[32 (c / 2) ..]`.
struct Q4K;

impl K4 for Q4K {
    const BYTES: usize = 144;
    const VECTOR_HEADER: bool = true;

    #[inline(always)]
    unsafe fn quants(b: *const u8) -> [__m256i; 8] {
        // SAFETY: `qs` is bytes 16..144 of the block.
        unsafe { nibble_chunks(b.add(16)) }
    }
}

/// `block_q5_K { d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`: Q4_K's nibbles
/// (`qs` from byte 48) plus bit `c` of `qh[l]`, worth 16.
struct Q5K;

impl K4 for Q5K {
    const BYTES: usize = 176;
    const VECTOR_HEADER: bool = false;

    #[inline(always)]
    unsafe fn quants(b: *const u8) -> [__m256i; 8] {
        // SAFETY: `qh` is bytes 16..48, `qs` 48..176 of the block.
        let (qh, q) = unsafe { (load(b.add(16)), nibble_chunks(b.add(48))) };
        [
            _mm256_or_si256(q[0], bit_to::<4>(qh, 0)),
            _mm256_or_si256(q[1], bit_to::<4>(qh, 1)),
            _mm256_or_si256(q[2], bit_to::<4>(qh, 2)),
            _mm256_or_si256(q[3], bit_to::<4>(qh, 3)),
            _mm256_or_si256(q[4], bit_to::<4>(qh, 4)),
            _mm256_or_si256(q[5], bit_to::<4>(qh, 5)),
            _mm256_or_si256(q[6], bit_to::<4>(qh, 6)),
            _mm256_or_si256(q[7], bit_to::<4>(qh, 7)),
        ]
    }
}

/// Q6_K, Q3_K and Q2_K: per-16 scales `sc_g`, quants offset by `OFFSET`, minimums `m_g` (Q2_K):
/// `Σ_c d_a,c·Σ_{g∈c} (d·sc_g·(Σ q y − OFFSET·S_g) − dmin·m_g·S_g)`.
trait K16 {
    const BYTES: usize;
    /// `w = d·sc·(q − OFFSET)`: 32 or 4 (a power of two), or 0.
    const OFFSET: i32;
    /// Whether the format has minimums (`dmin·m_g`).
    const MINS: bool;
    /// Whether the quants are ≤ 31 (see [`Madd::dot4`]).
    const SMALL: bool;
    /// `(d, dmin)` in all lanes (`dmin` zero without minimums), and the sixteen signed scales and
    /// the minimums as bytes in natural group order.
    ///
    /// # Safety
    /// `BYTES` readable bytes at `b`; AVX2 and F16C are present.
    unsafe fn header(b: *const u8) -> (__m256, __m256, __m128i, __m128i);
    /// The quants of chunks `4h .. 4h + 4` (`h` is 0 or 1).
    ///
    /// # Safety
    /// As `header`.
    unsafe fn quants(b: *const u8, h: usize) -> [__m256i; 4];
}

/// The dot of a [`K16`] format.
///
/// # Safety
/// As [`Format::dot`].
#[inline(always)]
unsafe fn dot_k16<F: K16, M: Madd>(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    let nb = whole_superblocks(F::BYTES, row, acts);
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY (all reads below): as in `dot_k4`.
        unsafe {
            let b = row.as_ptr().add(F::BYTES * i);
            let (d, dmin, scales, mins) = F::header(b);
            let y = load_acts(acts.qs.as_ptr().add(QK_K * i));
            let s16 = load(acts.sum16.as_ptr().add(16 * i).cast());

            // sc_g·Σ q y per group, in `dot4` lane order; ≤ 16·63·127·128 < 2³¹ in magnitude.
            let sc = group_order_epi8(scales);
            let t0 = M::dot4(F::quants(b, 0), [y[0], y[1], y[2], y[3]], F::SMALL);
            let t0 = _mm256_mullo_epi32(t0, _mm256_cvtepi8_epi32(sc));
            let t1 = M::dot4(F::quants(b, 1), [y[4], y[5], y[6], y[7]], F::SMALL);
            let t1 = _mm256_mullo_epi32(t1, _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc, sc)));
            // Lanes: [t0 low halves | t1 high halves] + [t0 high halves | t1 low halves].
            let mut chunks = _mm256_add_epi32(
                _mm256_blend_epi32::<0xF0>(t0, t1),
                _mm256_permute2x128_si256::<0x21>(t0, t1),
            );
            if F::OFFSET != 0 {
                // Lane c: sc_2c·S_2c + sc_2c+1·S_2c+1.
                let s = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), s16);
                let offsets = match F::OFFSET {
                    32 => _mm256_slli_epi32::<5>(s),
                    4 => _mm256_slli_epi32::<2>(s),
                    _ => _mm256_mullo_epi32(s, _mm256_set1_epi32(F::OFFSET)),
                };
                chunks = _mm256_sub_epi32(chunks, offsets);
            }
            let da = _mm256_loadu_ps(acts.d.as_ptr().add(CHUNKS * i));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(chunks), _mm256_mul_ps(da, d), acc);
            if F::MINS {
                // Lane c: m_2c·S_2c + m_2c+1·S_2c+1.
                let m = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), s16);
                acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_mul_ps(da, dmin), acc_min);
            }
        }
    }
    // SAFETY: AVX is present (the caller's contract).
    unsafe { hsum_ps(_mm256_sub_ps(acc, acc_min)) }
}

/// `block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`. Chunk `4h + k`: low
/// nibbles (`k < 2`) or high nibbles of `ql[64h + 32 (k % 2) ..]`, plus bits `2k ..` of
/// `qh[32h ..]` as bits 4–5; offset 32.
struct Q6K;

impl K16 for Q6K {
    const BYTES: usize = 210;
    const OFFSET: i32 = 32;
    const MINS: bool = false;
    const SMALL: bool = false;

    #[inline(always)]
    unsafe fn header(b: *const u8) -> (__m256, __m256, __m128i, __m128i) {
        // SAFETY: `scales` is bytes 192..208 and `d` 208..210 of the block.
        unsafe {
            let scales = _mm_loadu_si128(b.add(192).cast());
            (half8(b.add(208)), _mm256_setzero_ps(), scales, _mm_setzero_si128())
        }
    }

    #[inline(always)]
    unsafe fn quants(b: *const u8, h: usize) -> [__m256i; 4] {
        // SAFETY: `ql` is bytes 0..128, `qh` 128..192 of the block.
        let (ql0, ql1, qh) = unsafe { (load(b.add(64 * h)), load(b.add(64 * h + 32)), load(b.add(128 + 32 * h))) };
        [
            _mm256_or_si256(nibble::<false>(ql0), _mm256_slli_epi16::<4>(crumb(qh, 0))),
            _mm256_or_si256(nibble::<false>(ql1), _mm256_slli_epi16::<4>(crumb(qh, 1))),
            _mm256_or_si256(nibble::<true>(ql0), _mm256_slli_epi16::<4>(crumb(qh, 2))),
            _mm256_or_si256(nibble::<true>(ql1), _mm256_slli_epi16::<4>(crumb(qh, 3))),
        ]
    }
}

/// `block_q3_K { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }`. Chunk `c = 4h + k`:
/// bits `2k ..` of `qs[32h ..]`, plus bit `c` of `hmask[l]` as bit 2; offset 4; scales offset 32.
struct Q3K;

impl K16 for Q3K {
    const BYTES: usize = 110;
    const OFFSET: i32 = 4;
    const MINS: bool = false;
    const SMALL: bool = true;

    #[inline(always)]
    unsafe fn header(b: *const u8) -> (__m256, __m256, __m128i, __m128i) {
        // SAFETY: `scales` is bytes 96..108 and `d` 108..110 of the block.
        unsafe {
            let s = q3_k_scales(std::slice::from_raw_parts(b.add(96), 12));
            let s = _mm_setr_epi32(s[0] as i32, s[1] as i32, s[2] as i32, s[3] as i32);
            let s = _mm_sub_epi8(s, _mm_set1_epi8(32));
            (half8(b.add(108)), _mm256_setzero_ps(), s, _mm_setzero_si128())
        }
    }

    #[inline(always)]
    unsafe fn quants(b: *const u8, h: usize) -> [__m256i; 4] {
        // SAFETY: `hmask` is bytes 0..32, `qs` 32..96 of the block.
        let (hmask, qs) = unsafe { (load(b), load(b.add(32 + 32 * h))) };
        let c = 4 * h;
        [
            _mm256_or_si256(crumb(qs, 0), bit_to::<2>(hmask, c)),
            _mm256_or_si256(crumb(qs, 1), bit_to::<2>(hmask, c + 1)),
            _mm256_or_si256(crumb(qs, 2), bit_to::<2>(hmask, c + 2)),
            _mm256_or_si256(crumb(qs, 3), bit_to::<2>(hmask, c + 3)),
        ]
    }
}

/// `block_q2_K { scales: [u8; 16], qs: [u8; 64], d, dmin: f16 }`. Chunk `c = 4h + k`: bits
/// `2k ..` of `qs[32h ..]`; scale byte `g` = `sc_g | m_g << 4`.
struct Q2K;

impl K16 for Q2K {
    const BYTES: usize = 84;
    const OFFSET: i32 = 0;
    const MINS: bool = true;
    const SMALL: bool = true;

    #[inline(always)]
    unsafe fn header(b: *const u8) -> (__m256, __m256, __m128i, __m128i) {
        // SAFETY: `scales` is bytes 0..16, `d` and `dmin` 80..84 of the block.
        unsafe {
            let s = _mm_loadu_si128(b.cast());
            let low = _mm_set1_epi8(0x0F);
            let (sc, m) = (_mm_and_si128(s, low), _mm_and_si128(_mm_srli_epi16::<4>(s), low));
            (half8(b.add(80)), half8(b.add(82)), sc, m)
        }
    }

    #[inline(always)]
    unsafe fn quants(b: *const u8, h: usize) -> [__m256i; 4] {
        // SAFETY: `qs` is bytes 16..80 of the block.
        let qs = unsafe { load(b.add(16 + 32 * h)) };
        [crumb(qs, 0), crumb(qs, 1), crumb(qs, 2), crumb(qs, 3)]
    }
}

/// Every [`K4`] and [`K16`] format is a [`Format`].
macro_rules! formats {
    ($($format:ident => $dot:ident,)*) => {$(
        impl Format for $format {
            #[inline(always)]
            unsafe fn dot<M: Madd>(row: &[u8], acts: Q8Ref<'_>) -> f32 {
                // SAFETY: forwarded.
                unsafe { $dot::<$format, M>(row, acts) }
            }
        }
    )*};
}

formats! {
    Q4K => dot_k4,
    Q5K => dot_k4,
    Q6K => dot_k16,
    Q3K => dot_k16,
    Q2K => dot_k16,
}

// ---------------------------------------------------------------------------------------------
// Tests of the `vpdpbusd` path on CPUs without it
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::q8::{quantize_q8, Q8Acts};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `vpdpbusd` from zero, exactly, with AVX2: even and odd bytes widened to i16 and
    /// multiplied by `vpmaddwd` (no saturation).
    struct EmulatedDpbusd;

    impl Madd for EmulatedDpbusd {
        #[inline(always)]
        unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
            let u_even = _mm256_and_si256(u, _mm256_set1_epi16(0x00FF));
            let u_odd = _mm256_srli_epi16::<8>(u);
            let s_even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(s));
            let s_odd = _mm256_srai_epi16::<8>(s);
            _mm256_add_epi32(_mm256_madd_epi16(u_even, s_even), _mm256_madd_epi16(u_odd, s_odd))
        }
    }

    kernel_set!(emulated_vnni, EmulatedDpbusd, "avx2,fma,f16c");

    /// Random blocks (finite f16 scales in ±0.05), random activations in ±3.
    fn case(dtype: DType, blocks: usize, rng: &mut StdRng) -> (Vec<u8>, Q8Acts) {
        let f16_at: &[usize] = match dtype {
            DType::Q2_K => &[80, 82],
            DType::Q3_K => &[108],
            DType::Q4_K | DType::Q5_K => &[0, 2],
            _ => &[208],
        };
        let bb = dtype.block_bytes();
        let mut row: Vec<u8> = (0..blocks * bb).map(|_| rng.gen()).collect();
        for block in row.chunks_exact_mut(bb) {
            for &off in f16_at {
                let h = half::f16::from_f32(rng.gen_range(-0.05f32..0.05));
                block[off..off + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        let x: Vec<f32> = (0..blocks * QK_K).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let mut acts = Q8Acts::default();
        quantize_q8(&x, &mut acts);
        (row, acts)
    }

    #[test]
    fn vpdpbusd_path_matches_portable() {
        if !Level::Avx2.detected() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(1);
        for dtype in [DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K] {
            let dot = emulated_vnni(dtype).expect("a k-quant");
            let portable = super::super::portable(dtype).expect("a k-quant");
            for blocks in 1..=8 {
                for _ in 0..16 {
                    let (row, acts) = case(dtype, blocks, &mut rng);
                    let (got, want) = (dot(&row, acts.as_ref()), portable(&row, acts.as_ref()));
                    let tol = 1e-4 * (1.0 + want.abs());
                    assert!((got - want).abs() <= tol, "{dtype} {blocks} blocks: {got} vs {want}");
                }
            }
        }
    }
}
