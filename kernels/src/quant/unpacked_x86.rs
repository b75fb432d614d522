//! x86 dots of unpacked rows (see `unpacked.rs`) with 8-bit activations.
//!
//! AVX2, per block of 32: `vpmaddubsw` + `vpmaddwd` give 8 i32 lanes (lanes 0–3 the first group
//! of 16, 4–7 the second), converted and multiplied by the block's lane scales `dv·d_a`; four
//! accumulators break the dependency chain. The offsets `m_g·S_g·d_a` are a separate 8-lane FMA
//! per four blocks.
//!
//! AVX512-VNNI, eight blocks per step and two rows at a time (sharing the activation loads):
//! four 512-bit `vpdpbusd` and a transpose-add tree leave the 16 group sums of the step in one
//! vector, in the group order `STEP_GROUPS`; one conversion, then one multiply and two FMAs with
//! the group scales `ds` and offsets `m_step` (stored in that order by the unpacking) and the
//! activation scales and group sums (permuted to it once per call, for all rows). A row's last
//! blocks (fewer than eight) are a step of masked loads.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// `[e(0), e(1), e(2), e(3)]`, written out: a closure would not inherit the kernel's
/// `#[target_feature]`s, and LLVM would leave the intrinsics in it out of line.
macro_rules! four {
    (|$k:ident| $e:expr) => {
        [{ let $k = 0usize; $e }, { let $k = 1usize; $e }, { let $k = 2usize; $e }, { let $k = 3usize; $e }]
    };
}

use super::{whole_blocks, Unpacked, STEP};
use crate::quant::q8::{Q8Ref, Q8_BLOCK};

pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

pub(super) fn dot_rows(u: &Unpacked, acts: Q8Ref<'_>, out: &mut [f32]) {
    if zmm_detected() {
        // SAFETY: the features were just detected (and AVX2/FMA by the caller).
        return unsafe { dot_rows_zmm::<1>(u, [acts], [out]) };
    }
    // SAFETY: `available` confirmed the features (checked by the caller).
    unsafe { dot_rows_avx2(u, acts, out) }
}

/// [`dot_rows`] for two tokens; the 512-bit kernel shares each weight load between them.
pub(super) fn dot_rows2(u: &Unpacked, acts: [Q8Ref<'_>; 2], out: [&mut [f32]; 2]) {
    if zmm_detected() {
        // SAFETY: the features were just detected (and AVX2/FMA by the caller).
        return unsafe { dot_rows_zmm::<2>(u, acts, out) };
    }
    let [o0, o1] = out;
    dot_rows(u, acts[0], o0);
    dot_rows(u, acts[1], o1);
}

/// AVX512-F/BW/VL and AVX512-VNNI, detected once.
fn zmm_detected() -> bool {
    use std::arch::is_x86_feature_detected as has;
    use std::sync::OnceLock;
    static ZMM: OnceLock<bool> = OnceLock::new();
    *ZMM.get_or_init(|| has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni"))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(u: &Unpacked, acts: Q8Ref<'_>, out: &mut [f32]) {
    let nb = whole_blocks(u, acts);
    let nblk = u.cols / Q8_BLOCK;
    for (r, o) in out.iter_mut().enumerate().take(u.rows) {
        let q = &u.q[r * u.cols..][..nb * Q8_BLOCK];
        let dv = &u.dv[r * nblk * 8..][..nb * 8];
        let m = &u.m[r * nblk * 2..][..nb * 2];
        // SAFETY: every slice above holds `nb` blocks, and so do the activations.
        *o = unsafe { dot_row(q, dv, m, acts, nb) };
    }
}

/// # Safety
/// AVX2 and FMA are present; `q`, `dv`, `m` and `acts` hold `nb` blocks.
#[inline(always)]
unsafe fn dot_row(q: &[u8], dv: &[f32], m: &[f32], acts: Q8Ref<'_>, nb: usize) -> f32 {
    let (q, dv, m) = (q.as_ptr(), dv.as_ptr(), m.as_ptr());
    let (y, da, s16) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.sum16.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut macc = _mm256_setzero_ps();
    let mut b = 0;
    // SAFETY: every read is of blocks below `nb` (see the contract).
    unsafe {
        while b + 4 <= nb {
            for k in 0..4 {
                let bk = b + k;
                let w = _mm256_loadu_si256(q.add(Q8_BLOCK * bk).cast());
                let a = _mm256_loadu_si256(y.add(Q8_BLOCK * bk).cast());
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones);
                let s = _mm256_mul_ps(_mm256_loadu_ps(dv.add(8 * bk)), _mm256_broadcast_ss(&*da.add(bk)));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[k]);
            }
            // Offsets of the 8 groups of these 4 blocks: m_g · S_g · d_a,(g/2).
            let sums = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_loadu_si128(s16.add(2 * b).cast())));
            let da4 = _mm256_castps128_ps256(_mm_loadu_ps(da.add(b)));
            let da8 = _mm256_permutevar8x32_ps(da4, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
            macc = _mm256_fmadd_ps(_mm256_mul_ps(sums, da8), _mm256_loadu_ps(m.add(2 * b)), macc);
            b += 4;
        }
        let mut tail = 0f32;
        while b < nb {
            let w = _mm256_loadu_si256(q.add(Q8_BLOCK * b).cast());
            let a = _mm256_loadu_si256(y.add(Q8_BLOCK * b).cast());
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones);
            let s = _mm256_mul_ps(_mm256_loadu_ps(dv.add(8 * b)), _mm256_broadcast_ss(&*da.add(b)));
            acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[0]);
            let d = *da.add(b);
            tail += d * (*m.add(2 * b) * *s16.add(2 * b) as f32 + *m.add(2 * b + 1) * *s16.add(2 * b + 1) as f32);
            b += 1;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let v = _mm256_add_ps(v, macc);
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        _mm_cvtss_f32(h) + tail
    }
}

/// The block of each lane of a step's group sums, in the order `STEP_GROUPS`.
const GROUP_BLOCKS: [i32; 16] = [0, 2, 4, 6, 0, 2, 4, 6, 1, 3, 5, 7, 1, 3, 5, 7];

/// Folds four `vpdpbusd` results (`p[k]`: blocks `2k`, `2k + 1`; 4 lanes per group) into the 16
/// group sums, in the order `STEP_GROUPS` (lane `4L + k` = the sum of `p[k]`'s 128-bit lane `L`).
#[inline(always)]
unsafe fn tree16(p: [__m512i; 4]) -> __m512i {
    let p01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    let p23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
    _mm512_add_epi32(_mm512_unpacklo_epi64(p01, p23), _mm512_unpackhi_epi64(p01, p23))
}

/// Rows computed together by [`dot_rows_zmm`].
const ZROWS: usize = 2;

/// Steps whose activation vectors [`dot_rows_zmm`] prepares at once (8192 columns).
const CHUNK_STEPS: usize = 32;

/// Byte masks of the four 64-byte loads of a step holding `blocks` (< 8) blocks: whole loads,
/// then a half one for an odd count.
fn step_masks(blocks: usize) -> [u64; 4] {
    std::array::from_fn(|k| match blocks.saturating_sub(2 * k) {
        0 => 0,
        1 => u32::MAX as u64,
        _ => u64::MAX,
    })
}

/// `out[t][r]` = row `r`'s dot with `acts[t]`, for `T` tokens (1 or 2: the tokens share each
/// weight load, and two keep every operand in registers).
///
/// # Safety
/// AVX2, FMA, AVX512-F/BW/VL and AVX512-VNNI are present.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_rows_zmm<const T: usize>(u: &Unpacked, acts: [Q8Ref<'_>; T], out: [&mut [f32]; T]) {
    let nb = acts.iter().map(|a| whole_blocks(u, *a)).min().unwrap_or(0);
    let steps = nb.div_ceil(8);
    let row_steps = u.cols.div_ceil(STEP);
    let n = out.iter().map(|o| o.len()).min().unwrap_or(0).min(u.rows);
    let group_perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15); // STEP_GROUPS
    let group_blocks = _mm512_loadu_si512(GROUP_BLOCKS.as_ptr().cast());
    let mut out = out;
    for o in out.iter_mut() {
        o[..n].fill(0.0);
    }
    // Per step of the chunk, shared by every row: the loads' byte masks (all ones but in a last
    // partial step) and, per token, the activation scale of each group and `d_a·S_g`, in the
    // order of the group sums (zero past the last block).
    // Left uninitialized (zeroing them cost more than the products of a small tile); every entry
    // read is written first, in the chunk's own loop below.
    let mut masks = [MaybeUninit::<[u64; 4]>::uninit(); CHUNK_STEPS];
    let mut da16 = [[MaybeUninit::<__m512>::uninit(); CHUNK_STEPS]; T];
    let mut sda = [[MaybeUninit::<__m512>::uninit(); CHUNK_STEPS]; T];
    for s0 in (0..steps).step_by(CHUNK_STEPS) {
        let s1 = (s0 + CHUNK_STEPS).min(steps);
        for s in s0..s1 {
            let (b, blocks) = (8 * s, (nb - 8 * s).min(8));
            masks[s - s0].write(step_masks(blocks));
            let (m_blocks, m_groups) = ((1u32 << blocks) - 1, ((1u32 << (2 * blocks)) - 1) as u16);
            for t in 0..T {
                // SAFETY: the masked loads read blocks below `nb` only.
                unsafe {
                    let d = _mm256_maskz_loadu_ps(m_blocks as u8, acts[t].d.as_ptr().add(b));
                    let d = _mm512_permutexvar_ps(group_blocks, _mm512_castps256_ps512(d));
                    let s16 = _mm256_maskz_loadu_epi16(m_groups, acts[t].sum16.as_ptr().add(2 * b));
                    let sums = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(group_perm, _mm512_cvtepi16_epi32(s16)));
                    da16[t][s - s0].write(d);
                    sda[t][s - s0].write(_mm512_mul_ps(sums, d));
                }
            }
        }
        for r0 in (0..n).step_by(ZROWS) {
            // A last single row is computed twice and stored once.
            let rows = [r0, (r0 + 1).min(n - 1)];
            let q = rows.map(|r| u.q[r * u.cols..].as_ptr());
            let ds = rows.map(|r| u.ds[r * row_steps * 16..].as_ptr());
            let m = rows.map(|r| u.m_step[r * row_steps * 16..].as_ptr());
            let mut acc = [[_mm512_setzero_ps(); ZROWS]; T];
            // SAFETY: the loads of a step are masked to its blocks below `nb`, which the rows and
            // `acts` hold; `ds` and `m_step` hold `row_steps ≥ steps` steps per row.
            unsafe {
                for s in s0..s1 {
                    let (b, i) = (8 * s, s - s0);
                    // SAFETY: entries `0..s1 - s0` were written above for this chunk.
                    let mask = masks[i].assume_init_ref();
                    let mut a = [[_mm512_setzero_si512(); 4]; T];
                    for t in 0..T {
                        let y = acts[t].qs.as_ptr();
                        a[t] = four!(|k| _mm512_maskz_loadu_epi8(mask[k], y.add(Q8_BLOCK * (b + 2 * k)).cast()));
                    }
                    for k in 0..ZROWS {
                        let w = four!(|j| _mm512_maskz_loadu_epi8(mask[j], q[k].add(Q8_BLOCK * (b + 2 * j)).cast()));
                        let (dsk, mk) = (_mm512_loadu_ps(ds[k].add(16 * s)), _mm512_loadu_ps(m[k].add(16 * s)));
                        for t in 0..T {
                            let p = four!(|j| _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[j], a[t][j]));
                            let sums = _mm512_cvtepi32_ps(tree16(p));
                            let (d, sd) = (da16[t][i].assume_init(), sda[t][i].assume_init());
                            acc[t][k] = _mm512_fmadd_ps(sums, _mm512_mul_ps(dsk, d), acc[t][k]);
                            acc[t][k] = _mm512_fmadd_ps(mk, sd, acc[t][k]);
                        }
                    }
                }
            }
            for t in 0..T {
                out[t][r0] += _mm512_reduce_add_ps(acc[t][0]);
                if rows[1] != r0 {
                    out[t][rows[1]] += _mm512_reduce_add_ps(acc[t][1]);
                }
            }
        }
    }
}
