//! x86-64 integer dots of the legacy formats with 8-bit activations (the `avx2` versions of ggml's
//! `ggml_vec_dot_q4_0_q8_0` … in `ggml-cpu/arch/x86/quants.c`, restructured; see `legacy_q8.rs`
//! for the arithmetic).
//!
//! One generic body, [`dot_row`], over a [`Format`] (how a block's 32 quants become 32 bytes) and
//! a [`Madd`] (how unsigned × signed bytes are multiplied and summed), instantiated in three
//! `#[target_feature]` copies:
//! - `avx2`: `vpmaddubsw` (u8·i8 pairs → i16) and `vpmaddwd` (i16 pairs → i32);
//! - `avx512vnni`: `vpdpbusd` on 256-bit vectors (AVX512-VNNI + AVX512-VL: Zen 4/5, Ice Lake+);
//! - `avxvnni`: the VEX-encoded `vpdpbusd` (AVX-VNNI: Alder Lake+, Zen 5).
//!
//! The loop takes four blocks at a time (then two, then one): four 8-lane integer dots are folded
//! by a transpose-add tree into one vector whose lane `b` / `b + 4` holds the low / high half of
//! block `b`'s sum, so the four blocks need one int→float conversion and one FMA against
//! `[s0 s1 s2 s3 s0 s1 s2 s3]` (`s_b = d_b·d_a,b`) instead of four of each. The weight scales of
//! the four blocks are read with scalar loads into one 64-bit word and converted by one
//! `vcvtph2ps`. The Q4_0/Q5_0 offsets (`−8·S`, `−16·S`) are subtracted in the integer domain from
//! the low lanes; the Q4_1/Q5_1 minimums go into a second, 4-lane accumulator.
//!
//! The 512-bit many-rows kernels (two blocks per `zmm`, eight per step) are in
//! `legacy_q8_zmm.rs`; they finish each row with this file's two- and one-block steps.

use super::{whole_blocks, DType, DotQ8, DotQ8Gather, DotQ8Rows, Q8Ref, Q8_BLOCK};
use std::arch::x86_64::*;
use crate::quant::x86_level::{best_level, Level};

/// `[e(0), e(1), e(2), e(3)]` for `four!(|k| e(k))`, written out: a closure (as in
/// `std::array::from_fn`) does not inherit the `#[target_feature]`s of the kernel it is inlined
/// into, so LLVM would leave it, and the intrinsics in it, out of line (10-20× slower).
macro_rules! four {
    (|$k:ident| $e:expr) => {
        [
            { let $k = 0usize; $e },
            { let $k = 1usize; $e },
            { let $k = 2usize; $e },
            { let $k = 3usize; $e },
        ]
    };
}

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

/// The many-rows kernel of the best level (see [`DotQ8Rows`]).
pub(super) fn best_rows(dtype: DType) -> Option<DotQ8Rows> {
    match best_level()? {
        Level::Avx512Vnni if zmm::detected() => zmm::rows(dtype),
        Level::Avx512Vnni => avx512vnni_rows(dtype),
        Level::AvxVnni => avxvnni_rows(dtype),
        Level::Avx2 => avx2_rows(dtype),
    }
}

/// The fastest subset-of-rows kernel for `dtype` on this CPU.
pub(super) fn best_gather(dtype: DType) -> Option<DotQ8Gather> {
    match best_level()? {
        Level::Avx512Vnni if zmm::detected() => zmm::gather(dtype),
        Level::Avx512Vnni => avx512vnni_gather(dtype),
        Level::AvxVnni => avxvnni_gather(dtype),
        Level::Avx2 => avx2_gather(dtype),
    }
}

/// Every detected level's many-rows kernel, named. For tests.
pub(super) fn rows_variants(dtype: DType) -> Vec<(&'static str, DotQ8Rows)> {
    named_variants(
        |level| match level {
            Level::Avx512Vnni => avx512vnni_rows(dtype),
            Level::AvxVnni => avxvnni_rows(dtype),
            Level::Avx2 => avx2_rows(dtype),
        },
        || zmm::rows(dtype),
    )
}

/// Every detected level's subset-of-rows kernel, named. For tests.
pub(super) fn gather_variants(dtype: DType) -> Vec<(&'static str, DotQ8Gather)> {
    named_variants(
        |level| match level {
            Level::Avx512Vnni => avx512vnni_gather(dtype),
            Level::AvxVnni => avxvnni_gather(dtype),
            Level::Avx2 => avx2_gather(dtype),
        },
        || zmm::gather(dtype),
    )
}

/// The kernel `at(level)` of each detected level, worst first, then the 512-bit one `zmm()`
/// where its features are present, each with its name.
fn named_variants<K>(at: impl Fn(Level) -> Option<K>, zmm: impl FnOnce() -> Option<K>) -> Vec<(&'static str, K)> {
    let mut out: Vec<(&'static str, K)> = Vec::new();
    for level in Level::ALL.into_iter().rev().filter(|l| l.detected()) {
        out.extend(at(level).map(|d| (level.name(), d)));
    }
    if zmm::detected() {
        out.extend(zmm().map(|d| ("avx512vnni_zmm", d)));
    }
    out
}

/// The detected levels, worst first, plus `avx2_i32tree`: the AVX2 multiply in the loop the
/// VNNI variants run (each block widened to i32 before the tree), so that this shared code is
/// tested on CPUs without VNNI too. It is never chosen by [`best`].
pub(super) fn variants(dtype: DType) -> Vec<(&'static str, DotQ8)> {
    let mut out: Vec<(&'static str, DotQ8)> = Vec::new();
    for level in Level::ALL.into_iter().rev().filter(|l| l.detected()) {
        if level == Level::Avx2 {
            out.extend(avx2_i32tree(dtype).map(|d| ("avx2_i32tree", d)));
        }
        out.extend(kernel(level, dtype).map(|d| (level.name(), d)));
    }
    out
}

/// `fn $name(dtype) -> Option<DotQ8>`: the five kernels compiled with `$features`, using `$madd`;
/// with two more names, also `fn $rows(dtype) -> Option<DotQ8Rows>` and `fn $gather(dtype) ->
/// Option<DotQ8Gather>`. Call them only once `$features` were detected.
macro_rules! kernel_set {
    ($name:ident, $rows:ident, $gather:ident, $madd:ty, $features:literal) => {
        kernel_set!($name, $madd, $features);

        fn $gather(dtype: DType) -> Option<DotQ8Gather> {
            #[target_feature(enable = $features)]
            unsafe fn dot<F: Format>(w: &[u8], row_bytes: usize, rows: &[u32], acts: Q8Ref<'_>, out: &mut [f32]) {
                // SAFETY: `dot_gather` needs the features of `$madd` and AVX2/FMA/F16C, all
                // enabled here.
                unsafe { dot_gather::<F, $madd>(w, row_bytes, rows, acts, out) }
            }
            // SAFETY (each closure): reachable only through `best_gather`, called for levels
            // whose features `Level::detected` confirmed.
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

        fn $rows(dtype: DType) -> Option<DotQ8Rows> {
            #[target_feature(enable = $features)]
            unsafe fn dot<F: Format>(w: &[u8], row_bytes: usize, acts: Q8Ref<'_>, out: &mut [f32]) {
                // SAFETY: `dot_rows` needs the features of `$madd` and AVX2/FMA/F16C, all enabled
                // here.
                unsafe { dot_rows::<F, $madd>(w, row_bytes, acts, out) }
            }
            // SAFETY (each closure): reachable only through `best_rows`/`rows_variants`, called
            // for levels whose features `Level::detected` confirmed.
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
    };
    ($name:ident, $madd:ty, $features:literal) => {
        fn $name(dtype: DType) -> Option<DotQ8> {
            #[target_feature(enable = $features)]
            unsafe fn dot<F: Format>(row: &[u8], acts: Q8Ref<'_>) -> f32 {
                // SAFETY: `dot_row` needs the features of `$madd` and AVX2/FMA/F16C, all enabled
                // here.
                unsafe { dot_row::<F, $madd>(row, acts) }
            }
            // SAFETY (each closure): reachable only through `kernel`, called for levels
            // whose features `Level::detected` confirmed.
            let dot: DotQ8 = match dtype {
                DType::Q4_0 => |r, a| unsafe { dot::<Q40>(r, a) },
                DType::Q4_1 => |r, a| unsafe { dot::<Q41>(r, a) },
                DType::Q5_0 => |r, a| unsafe { dot::<Q50>(r, a) },
                DType::Q5_1 => |r, a| unsafe { dot::<Q51>(r, a) },
                DType::Q8_0 => |r, a| unsafe { dot::<Q80>(r, a) },
                _ => return None,
            };
            Some(dot)
        }
    };
}

kernel_set!(avx2, avx2_rows, avx2_gather, Avx2, "avx2,fma,f16c");
kernel_set!(avx2_i32tree, Avx2I32Tree, "avx2,fma,f16c");
kernel_set!(avx512vnni, avx512vnni_rows, avx512vnni_gather, Avx512Vnni, "avx2,fma,f16c,avx512vnni,avx512vl");
kernel_set!(avxvnni, avxvnni_rows, avxvnni_gather, AvxVnni, "avx2,fma,f16c,avxvnni");

// ---------------------------------------------------------------------------------------------
// Multiply-add of bytes
// ---------------------------------------------------------------------------------------------

/// Unsigned × signed byte products, summed. Implementations are only run inside functions that
/// enable their instruction sets (see `kernel_set!`).
trait Madd {
    /// 8 i32 lanes, lane `k` = `Σ_{i<4} u[4k+i]·s[4k+i]`. Bytes of `u` ≤ 128 and of `s` in
    /// −127..=127 (`vpmaddubsw` saturates its i16 pairs beyond that).
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;

    /// Four blocks folded as in [`tree`]: lane `b` = `Σ_{j<16} u_b[j]·s_b[j]`, lane `b + 4` the same
    /// over `16 ≤ j < 32`. Bytes of `u` ≤ 31 and of `s` in −128..=127.
    #[inline(always)]
    unsafe fn dot4_small(u: [__m256i; 4], s: [__m256i; 4]) -> __m256i {
        // SAFETY: forwarded to the caller.
        unsafe { tree(four!(|k| Self::dot(u[k], s[k]))) }
    }
}

/// `vpmaddubsw` + `vpmaddwd` (needs AVX2).
struct Avx2;

impl Madd for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        // |pair| ≤ 2·128·127 = 32512: no saturation.
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    /// The tree on the i16 pair sums before widening, so one `vpmaddwd` serves four blocks:
    /// a pair is at most 2·31·128 = 7936 in magnitude, four of them 31744 < 32767.
    #[inline(always)]
    unsafe fn dot4_small(u: [__m256i; 4], s: [__m256i; 4]) -> __m256i {
        let m = four!(|k| _mm256_maddubs_epi16(u[k], s[k]));
        let m01 = _mm256_add_epi16(
            _mm256_unpacklo_epi32(m[0], m[1]),
            _mm256_unpackhi_epi32(m[0], m[1]),
        );
        let m23 = _mm256_add_epi16(
            _mm256_unpacklo_epi32(m[2], m[3]),
            _mm256_unpackhi_epi32(m[2], m[3]),
        );
        let t = _mm256_add_epi16(
            _mm256_unpacklo_epi64(m01, m23),
            _mm256_unpackhi_epi64(m01, m23),
        );
        _mm256_madd_epi16(t, _mm256_set1_epi16(1))
    }
}

/// [`Avx2`]'s multiply with the default (VNNI) `dot4_small` (needs AVX2).
struct Avx2I32Tree;

impl Madd for Avx2I32Tree {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: forwarded to the caller.
        unsafe { Avx2::dot(u, s) }
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

/// Folds four 8-lane vectors `p_b` into one: lane `b` = `Σ_{k<4} p_b[k]`, lane `b + 4` =
/// `Σ_{k≥4} p_b[k]` (a 4×4 transpose-and-add within each 128-bit half).
#[inline(always)]
unsafe fn tree(p: [__m256i; 4]) -> __m256i {
    let p01 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(p[0], p[1]),
        _mm256_unpackhi_epi32(p[0], p[1]),
    );
    let p23 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(p[2], p[3]),
        _mm256_unpackhi_epi32(p[2], p[3]),
    );
    _mm256_add_epi32(
        _mm256_unpacklo_epi64(p01, p23),
        _mm256_unpackhi_epi64(p01, p23),
    )
}

/// The eight i32 lanes of `v`, summed.
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let x = _mm_add_epi32(x, _mm_unpackhi_epi64(x, x));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0b01>(x));
    _mm_cvtsi128_si32(x)
}

/// The eight f32 lanes of `v` plus the four of `w`, summed.
#[inline(always)]
unsafe fn hsum_ps(v: __m256, w: __m128) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_add_ps(x, w);
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_movehdup_ps(x));
    _mm_cvtss_f32(x)
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

/// One legacy block format, as read by the vector kernels.
trait Format {
    /// Bytes per block.
    const BYTES: usize;
    /// `w = d·(q − OFFSET)` (0 for the formats with a minimum, and for Q8_0).
    const OFFSET: i16;
    /// Byte offset of the f16 minimum `m`, for Q4_1/Q5_1.
    const MIN_AT: Option<usize>;
    /// The quants are signed bytes (Q8_0) rather than unsigned values ≤ 31.
    const SIGNED: bool;
    /// The 32 quants of the block at `p`, one byte each, in element order.
    ///
    /// # Safety
    /// `p` points to `BYTES` readable bytes; AVX2 is present.
    unsafe fn quants(p: *const u8) -> __m256i;
}

/// The 32 nibbles of `block_q4_*.qs` (16 bytes at `p`): low nibbles are elements 0..16.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`; `loadu` needs no alignment.
    let q = unsafe { _mm_loadu_si128(p.cast()) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
        _mm256_set1_epi8(0x0F),
    )
}

/// `0x10` in byte `j` where bit `j` of `qh` is set (ggml's `bytes_from_bits_32`, masked).
#[inline(always)]
unsafe fn fifth_bits(qh: u32) -> __m256i {
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread);
    // Every bit but bit `j % 8` set in byte `j`: all ones exactly where bit `j` of `qh` is set.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// The 32 5-bit quants of a Q5 block with `qh` at `p + qh_at` and `qs` at `p + qh_at + 4`.
#[inline(always)]
unsafe fn quants_5bit(p: *const u8, qh_at: usize) -> __m256i {
    // SAFETY: the caller guarantees the block's bytes are readable.
    unsafe {
        let qh = p.add(qh_at).cast::<u32>().read_unaligned();
        _mm256_or_si256(nibbles(p.add(qh_at + 4)), fifth_bits(u32::from_le(qh)))
    }
}

struct Q40;
impl Format for Q40 {
    const BYTES: usize = 18;
    const OFFSET: i16 = 8;
    const MIN_AT: Option<usize> = None;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        // SAFETY: `qs` is bytes 2..18 of the block.
        unsafe { nibbles(p.add(2)) }
    }
}

struct Q41;
impl Format for Q41 {
    const BYTES: usize = 20;
    const OFFSET: i16 = 0;
    const MIN_AT: Option<usize> = Some(2);
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        // SAFETY: `qs` is bytes 4..20 of the block.
        unsafe { nibbles(p.add(4)) }
    }
}

struct Q50;
impl Format for Q50 {
    const BYTES: usize = 22;
    const OFFSET: i16 = 16;
    const MIN_AT: Option<usize> = None;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        // SAFETY: `qh` is bytes 2..6, `qs` 6..22 of the block.
        unsafe { quants_5bit(p, 2) }
    }
}

struct Q51;
impl Format for Q51 {
    const BYTES: usize = 24;
    const OFFSET: i16 = 0;
    const MIN_AT: Option<usize> = Some(2);
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        // SAFETY: `qh` is bytes 4..8, `qs` 8..24 of the block.
        unsafe { quants_5bit(p, 4) }
    }
}

struct Q80;
impl Format for Q80 {
    const BYTES: usize = 34;
    const OFFSET: i16 = 0;
    const MIN_AT: Option<usize> = None;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        // SAFETY: `qs` is bytes 2..34 of the block; `loadu` needs no alignment.
        unsafe { _mm256_loadu_si256(p.add(2).cast()) }
    }
}

// ---------------------------------------------------------------------------------------------
// The row kernel
// ---------------------------------------------------------------------------------------------

/// The f16 at byte `off` of each of the four blocks from `p` (`stride` bytes apart), as f32.
///
/// # Safety
/// The four halves are readable; F16C is present.
#[inline(always)]
unsafe fn halves4(p: *const u8, stride: usize, off: usize) -> __m128 {
    // SAFETY: forwarded to the caller; unaligned reads.
    let h = |k: usize| unsafe { p.add(k * stride + off).cast::<u16>().read_unaligned() } as u64;
    let bits = h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48;
    _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
}

/// The f16 at byte `off` of each of the two blocks from `p`, as f32 in lanes 0 and 1 (2 and 3
/// are zero).
///
/// # Safety
/// As [`halves4`].
#[inline(always)]
unsafe fn halves2(p: *const u8, stride: usize, off: usize) -> __m128 {
    // SAFETY: forwarded to the caller; unaligned reads.
    let h = |k: usize| unsafe { p.add(k * stride + off).cast::<u16>().read_unaligned() } as u32;
    _mm_cvtph_ps(_mm_cvtsi32_si128((h(0) | h(1) << 16) as i32))
}

/// The f16 at `p`, as f32 (F16C).
#[inline(always)]
unsafe fn half(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let h = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// The integer dot of one block: 8 i32 lanes summing to `Σ q_j y_j`.
#[inline(always)]
unsafe fn block_dot<F: Format, M: Madd>(w: __m256i, y: __m256i) -> __m256i {
    // SAFETY: forwarded to the caller (the features of `M`).
    unsafe {
        if F::SIGNED {
            // ggml's sign trick: |w| (≤ 128, unsigned) times y with w's sign.
            M::dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w))
        } else {
            M::dot(w, y)
        }
    }
}

/// The blocks of one row and of its activations, as raw pointers (see [`dot_row`]).
#[derive(Clone, Copy)]
struct Blocks {
    w: *const u8,
    y: *const i8,
    da: *const f32,
    sums: *const i16,
}

/// Float accumulators: `sum` of the integer dots times `d·d_a` (in the layout of [`tree`]),
/// `min` of the Q4_1/Q5_1 minimum terms `m·d_a·S` (one lane per block).
#[derive(Clone, Copy)]
struct Acc {
    sum: __m256,
    min: __m128,
}

/// `Σ_j w_j x_j` for one row of format `F` against quantized activations: four blocks per
/// iteration, then two, then one. (Eight per iteration into two accumulators measured the same:
/// the tree already gives each iteration four independent chains.)
///
/// # Safety
/// AVX2, FMA, F16C and the instruction set of `M` are present. (Memory safety does not depend on
/// the arguments: only the whole blocks that `row` and `acts` all hold are read.)
#[inline(always)]
unsafe fn dot_row<F: Format, M: Madd>(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    let nb = whole_blocks(F::BYTES, row, acts);
    let r = Blocks {
        w: row.as_ptr(),
        y: acts.qs.as_ptr(),
        da: acts.d.as_ptr(),
        sums: acts.sum16.as_ptr(),
    };
    let mut acc = Acc {
        sum: _mm256_setzero_ps(),
        min: _mm_setzero_ps(),
    };
    let mut b = 0;
    // SAFETY: every step reads blocks `b..b + n` with `b + n <= nb`, which `whole_blocks`
    // guarantees `row` and `acts` hold.
    unsafe {
        while b + 4 <= nb {
            acc = step4::<F, M>(r, b, acc);
            b += 4;
        }
        if b + 2 <= nb {
            acc = step2::<F, M>(r, b, acc);
            b += 2;
        }
        let tail = if b < nb { step1::<F, M>(r, b) } else { 0.0 };
        hsum_ps(acc.sum, acc.min) + tail
    }
}

/// Rows processed together by [`dot_rows`]: they share each activation load, and their four
/// independent accumulators keep the multiply units busy.
const ROWS: usize = 4;

/// `out[i]` = the dot of row `i` (`w[i·row_bytes..]`) with `acts`, for every `i < out.len()`
/// that `w` holds; [`ROWS`] rows at a time.
///
/// # Safety
/// As [`dot_row`].
#[inline(always)]
unsafe fn dot_rows<F: Format, M: Madd>(w: &[u8], row_bytes: usize, acts: Q8Ref<'_>, out: &mut [f32]) {
    if row_bytes == 0 {
        return out.fill(0.0);
    }
    let n = out.len().min(w.len() / row_bytes);
    let (groups, rest) = out[..n].split_at_mut(n - n % ROWS);
    for (g, o) in groups.chunks_exact_mut(ROWS).enumerate() {
        let rows = &w[g * ROWS * row_bytes..(g + 1) * ROWS * row_bytes];
        // SAFETY: forwarded to the caller.
        let r = unsafe { dot_row4::<F, M>(rows, row_bytes, acts) };
        o.copy_from_slice(&r);
    }
    let done = groups.len() * row_bytes;
    for (o, row) in rest.iter_mut().zip(w[done..].chunks_exact(row_bytes)) {
        // SAFETY: forwarded to the caller.
        *o = unsafe { dot_row::<F, M>(row, acts) };
    }
}

/// [`dot_row`] of the [`ROWS`] consecutive rows of `rows`.
///
/// # Safety
/// As [`dot_row`].
#[inline(always)]
unsafe fn dot_row4<F: Format, M: Madd>(rows: &[u8], row_bytes: usize, acts: Q8Ref<'_>) -> [f32; ROWS] {
    let r = four!(|k| &rows[k * row_bytes..(k + 1) * row_bytes]);
    // The same blocks of the row PREFETCH_GROUPS groups ahead (prefetches never fault).
    let ahead = four!(|k| r[k].as_ptr().wrapping_add(PREFETCH_GROUPS * ROWS * row_bytes));
    // SAFETY: forwarded to the caller.
    unsafe { dot_rows_at::<F, M>(r, ahead, acts) }
}

/// `out[i]` = the dot of row `rows[i]` of `w` (rows of `row_bytes`) with `acts`: a subset of
/// rows, [`ROWS`] at a time like [`dot_rows`], each group prefetching the rows of the group
/// [`PREFETCH_GROUPS`] ahead in the list. A row `w` does not hold gives 0.
///
/// # Safety
/// As [`dot_row`].
#[inline(always)]
unsafe fn dot_gather<F: Format, M: Madd>(w: &[u8], row_bytes: usize, rows: &[u32], acts: Q8Ref<'_>, out: &mut [f32]) {
    let held = if row_bytes == 0 { 0 } else { w.len() / row_bytes };
    let row = |i: u32| -> &[u8] {
        let i = i as usize;
        if i < held { &w[i * row_bytes..(i + 1) * row_bytes] } else { &[] }
    };
    let n = out.len().min(rows.len());
    let (groups, rest) = out[..n].split_at_mut(n - n % ROWS);
    for (g, o) in groups.chunks_exact_mut(ROWS).enumerate() {
        let ids = &rows[g * ROWS..(g + 1) * ROWS];
        let r = four!(|k| row(ids[k]));
        if r.iter().any(|x| x.len() != row_bytes) || row_bytes == 0 {
            for (ok, rk) in o.iter_mut().zip(r) {
                // SAFETY: forwarded to the caller.
                *ok = if rk.is_empty() { 0.0 } else { unsafe { dot_row::<F, M>(rk, acts) } };
            }
            continue;
        }
        let next = rows.get((g + PREFETCH_GROUPS) * ROWS..(g + PREFETCH_GROUPS + 1) * ROWS);
        let ahead = four!(|k| next.map_or(r[k].as_ptr(), |ids| row(ids[k]).as_ptr()));
        // SAFETY: forwarded to the caller; the four rows are whole.
        o.copy_from_slice(&unsafe { dot_rows_at::<F, M>(r, ahead, acts) });
    }
    for (o, &i) in rest.iter_mut().zip(&rows[n - n % ROWS..n]) {
        let rk = row(i);
        // SAFETY: forwarded to the caller.
        *o = if rk.is_empty() { 0.0 } else { unsafe { dot_row::<F, M>(rk, acts) } };
    }
}

/// [`dot_row`] of four rows of equal length sharing each activation load; `ahead[k]` is where
/// the lines to prefetch while computing row `k` start (any address: prefetches never fault).
///
/// # Safety
/// As [`dot_row`].
#[inline(always)]
unsafe fn dot_rows_at<F: Format, M: Madd>(rows: [&[u8]; ROWS], ahead: [*const u8; ROWS], acts: Q8Ref<'_>) -> [f32; ROWS] {
    let nb = rows.iter().map(|r| whole_blocks(F::BYTES, r, acts)).min().unwrap_or(0);
    let r = four!(|k| Blocks { w: rows[k].as_ptr(), y: acts.qs.as_ptr(), da: acts.d.as_ptr(), sums: acts.sum16.as_ptr() });
    let mut acc = [Acc { sum: _mm256_setzero_ps(), min: _mm_setzero_ps() }; ROWS];
    let mut b = 0;
    let mut out = [0.0f32; ROWS];
    // SAFETY: every step reads blocks `b..b + n` with `b + n <= nb`, which every row and `acts`
    // hold (`whole_blocks`).
    unsafe {
        while b + 4 <= nb {
            for k in 0..ROWS {
                // The stream of weights is requested early enough to hide the memory latency.
                crate::quant::prefetch_lines(ahead[k].wrapping_add(b * F::BYTES), 4 * F::BYTES);
                acc[k] = step4::<F, M>(r[k], b, acc[k]);
            }
            b += 4;
        }
        if b + 2 <= nb {
            for k in 0..ROWS {
                acc[k] = step2::<F, M>(r[k], b, acc[k]);
            }
            b += 2;
        }
        for k in 0..ROWS {
            let tail = if b < nb { step1::<F, M>(r[k], b) } else { 0.0 };
            out[k] = hsum_ps(acc[k].sum, acc[k].min) + tail;
        }
    }
    out
}

/// How many groups of [`ROWS`] rows ahead [`dot_row4`] and [`dot_gather`] prefetch.
const PREFETCH_GROUPS: usize = 4;

/// Blocks `b..b + 4` into `acc`.
///
/// # Safety
/// As [`dot_row`]; the four blocks are in bounds.
#[inline(always)]
unsafe fn step4<F: Format, M: Madd>(r: Blocks, b: usize, acc: Acc) -> Acc {
    // SAFETY: forwarded to the caller.
    unsafe {
        let wb = r.w.add(b * F::BYTES);
        let yb = r.y.add(b * Q8_BLOCK);
        let qw = four!(|k| F::quants(wb.add(k * F::BYTES)));
        let qy = four!(|k| _mm256_loadu_si256(yb.add(k * Q8_BLOCK).cast()));
        let mut t = if F::SIGNED {
            tree(four!(|k| block_dot::<F, M>(qw[k], qy[k])))
        } else {
            M::dot4_small(qw, qy)
        };
        let s16 = _mm_loadu_si128(r.sums.add(2 * b).cast()); // 8 × i16: two per block
        if F::OFFSET != 0 {
            let offsets = _mm_madd_epi16(s16, _mm_set1_epi16(F::OFFSET)); // OFFSET·S_b
            t = _mm256_sub_epi32(t, _mm256_zextsi128_si256(offsets));
        }
        let dav = _mm_loadu_ps(r.da.add(b));
        let s = _mm_mul_ps(halves4(wb, F::BYTES, 0), dav);
        let sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set_m128(s, s), acc.sum);
        let mut min = acc.min;
        if let Some(at) = F::MIN_AT {
            let sb = _mm_cvtepi32_ps(_mm_madd_epi16(s16, _mm_set1_epi16(1)));
            min = _mm_fmadd_ps(sb, _mm_mul_ps(halves4(wb, F::BYTES, at), dav), min);
        }
        Acc { sum, min }
    }
}

/// Blocks `b` and `b + 1` into `acc` (rows of 18 blocks, SmolLM2's 576 columns, end here): half
/// the tree, lanes `[B0 B1 B0 B1 | B0 B1 B0 B1]`, scales `[s0 s1]` repeated.
///
/// # Safety
/// As [`dot_row`]; the two blocks are in bounds.
#[inline(always)]
unsafe fn step2<F: Format, M: Madd>(r: Blocks, b: usize, acc: Acc) -> Acc {
    // SAFETY: forwarded to the caller.
    unsafe {
        let wb = r.w.add(b * F::BYTES);
        let yb = r.y.add(b * Q8_BLOCK);
        let p0 = block_dot::<F, M>(F::quants(wb), _mm256_loadu_si256(yb.cast()));
        let p1 = block_dot::<F, M>(
            F::quants(wb.add(F::BYTES)),
            _mm256_loadu_si256(yb.add(Q8_BLOCK).cast()),
        );
        let mut t = _mm256_add_epi32(_mm256_unpacklo_epi32(p0, p1), _mm256_unpackhi_epi32(p0, p1));
        let s16 = _mm_loadl_epi64(r.sums.add(2 * b).cast()); // 4 × i16, upper half zero
        if F::OFFSET != 0 {
            let offsets = _mm_madd_epi16(s16, _mm_set1_epi16(F::OFFSET));
            t = _mm256_sub_epi32(t, _mm256_zextsi128_si256(offsets));
        }
        let dav = _mm_castpd_ps(_mm_load_sd(r.da.add(b).cast())); // [da0 da1 0 0]
        let s = _mm_mul_ps(halves2(wb, F::BYTES, 0), dav);
        let s = _mm256_castpd_ps(_mm256_broadcastsd_pd(_mm_castps_pd(s)));
        let sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), s, acc.sum);
        let mut min = acc.min;
        if let Some(at) = F::MIN_AT {
            let sb = _mm_cvtepi32_ps(_mm_madd_epi16(s16, _mm_set1_epi16(1)));
            min = _mm_fmadd_ps(sb, _mm_mul_ps(halves2(wb, F::BYTES, at), dav), min);
        }
        Acc { sum, min }
    }
}

/// Block `b` alone, in scalar float.
///
/// # Safety
/// As [`dot_row`]; the block is in bounds.
#[inline(always)]
unsafe fn step1<F: Format, M: Madd>(r: Blocks, b: usize) -> f32 {
    // SAFETY: forwarded to the caller.
    unsafe {
        let wb = r.w.add(b * F::BYTES);
        let qy = _mm256_loadu_si256(r.y.add(b * Q8_BLOCK).cast());
        let qy_w = hsum_epi32(block_dot::<F, M>(F::quants(wb), qy));
        let s = *r.sums.add(2 * b) as i32 + *r.sums.add(2 * b + 1) as i32;
        let da = *r.da.add(b);
        let mut dot = half(wb) * da * (qy_w - F::OFFSET as i32 * s) as f32;
        if let Some(at) = F::MIN_AT {
            dot += half(wb.add(at)) * da * s as f32;
        }
        dot
    }
}

#[path = "legacy_q8_zmm.rs"]
mod zmm;
