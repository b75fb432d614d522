//! Weights stored by input column in the model's own quantization, for products whose input is
//! sparse: `down` over a token's kept neurons (PowerInfer's `ggml_axpy`) and gate/up over the
//! input channels above a threshold (TEAL's column skipping).
//!
//! The legacy formats quantize blocks of 32 consecutive inputs of one output row with one f16
//! scale `d` (and for Q4_1/Q5_1 an f16 minimum `m`): `W[o, j] = d[o, b]·(q[o, j] + offset) +
//! m[o, b]` for input `j` in block `b = j / 32`. [`QuantColumns`] keeps those same integers and
//! scales, only moved: input `j`'s quants for every output lie together (4-bit ones two to a byte,
//! Q5's fifth bits in a 32-bit plane beside them), the scales by block. Nothing is requantized, so
//! the product equals the dense one's weights exactly, and a column costs what it did in the row
//! layout (Q4_1: 0.625 bytes a weight with its scales, against 0.5625; Q4_0, Q5_0, Q8_0: the same).
//!
//! [`columns_axpy`]: `out = Σ_k coef[k] · W[:, idx[k]]`. Indices are taken block by block: for
//! each group of 32 outputs the block's columns are added into eight-lane registers, then
//! scaled by `d` once, `out[o] += d[o, b]·(Σ_k coef_k q[o, j_k] + offset·Σ_k coef_k) + m[o, b]·Σ_k coef_k`.

use half::f16;
use rayon::prelude::*;

use crate::quant::prefetch_lines;
use crate::{DType, KernelError, MatRef, Result};

/// Inputs per scale block (the formats' block) and outputs per group of a column.
const QK: usize = 32;

/// Bytes of each of the next block's columns fetched ahead (longer columns are then fetched
/// [`x86`]'s `AHEAD` bytes ahead of the groups being added).
const PREFETCH_BYTES: usize = 512;

/// Fewest column bytes a task reads. Tasks split the outputs, so each reads its share of every
/// column and nothing is merged; the product follows gate and up, whose parallel region has just
/// woken the pool (SmolLM2's `down` at 30% sparsity, about 0.4 MB a layer, 2 threads: FFN 6.0
/// ms per token on one task, 5.7 split in two).
const MIN_TASK_BYTES: usize = 128 << 10;

/// How a column's quants are packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bits {
    /// Q4_0, Q4_1: 16 bytes per group of 32 outputs, output `s` in byte `s % 16` (low nibble for
    /// `s < 16`); groups come in pairs (one 256-bit load).
    Four,
    /// Q5_0, Q5_1: the four low bits as [`Bits::Four`], then after all groups' nibbles one u32 per
    /// group whose bit `s` is output `s`'s fifth bit (20 bytes per 32 outputs).
    Five,
    /// Q8_0: 32 signed bytes per 32 outputs.
    Eight,
}

impl Bits {
    /// Groups of 32 outputs a column of `n_outputs` holds (in pairs for 4 and 5 bits).
    fn groups(self, n_outputs: usize) -> usize {
        match self {
            Bits::Eight => n_outputs.div_ceil(QK),
            _ => n_outputs.div_ceil(2 * QK) * 2,
        }
    }

    fn group_bytes(self) -> usize {
        match self {
            Bits::Four => 16,
            Bits::Five => 20,
            Bits::Eight => 32,
        }
    }
}

/// W (`(n_outputs, n_inputs)`, a legacy format) stored by input column, losslessly.
#[derive(Clone, Debug)]
pub struct QuantColumns {
    pub n_inputs: usize,
    pub n_outputs: usize,
    bits: Bits,
    offset: f32,      // added to every quant before `d` (Q4_0: -8, Q5_0: -16)
    groups: usize,    // n_outputs / 32, rounded up
    col_bytes: usize, // groups · group bytes
    q: Vec<u8>,       // (n_inputs, col_bytes)
    d: Vec<f16>,      // (n_inputs / 32, groups · 32): zero for padding outputs
    m: Vec<f16>,      // as `d` for Q4_1 and Q5_1, else empty
}

impl QuantColumns {
    /// Whether [`QuantColumns::from_mat`] takes this format.
    pub fn supports(dtype: DType) -> bool {
        matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0)
    }

    /// Moves `w`'s quants and scales into the column layout.
    pub fn from_mat(w: MatRef<'_>) -> Result<QuantColumns> {
        let (bits, offset, has_m) = match w.dtype {
            DType::Q4_0 => (Bits::Four, -8.0, false),
            DType::Q4_1 => (Bits::Four, 0.0, true),
            DType::Q5_0 => (Bits::Five, -16.0, false),
            DType::Q5_1 => (Bits::Five, 0.0, true),
            DType::Q8_0 => (Bits::Eight, 0.0, false),
            other => return Err(KernelError::Unsupported { op: "QuantColumns::from_mat", dtype: other.name() }),
        };
        let (rows, cols) = (w.rows, w.cols);
        let block_bytes = w.dtype.block_bytes();
        if cols % QK != 0 || w.data.len() != rows * (cols / QK) * block_bytes {
            return Err(KernelError::Shape {
                op: "QuantColumns::from_mat",
                expected: format!("{rows} rows of {cols} {} inputs in whole blocks", w.dtype.name()),
                got: format!("{} bytes", w.data.len()),
            });
        }
        let groups = bits.groups(rows);
        let padded = groups * QK;
        let col_bytes = groups * bits.group_bytes();
        let nb = cols / QK;
        let mut q = vec![0u8; cols * col_bytes];
        let mut d = vec![f16::ZERO; nb * padded];
        let mut m = if has_m { vec![f16::ZERO; nb * padded] } else { Vec::new() };
        let h = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]);
        for o in 0..rows {
            let (g, s) = (o / QK, o % QK);
            for (b, blk) in w.row(o).chunks_exact(block_bytes).enumerate() {
                d[b * padded + o] = h(blk, 0);
                if has_m {
                    m[b * padded + o] = h(blk, 2);
                }
                let vals: [u8; QK] = match w.dtype {
                    DType::Q8_0 => std::array::from_fn(|k| blk[2 + k]),
                    DType::Q4_0 | DType::Q4_1 => {
                        let qs = &blk[if has_m { 4 } else { 2 }..];
                        std::array::from_fn(|k| if k < 16 { qs[k] & 0x0F } else { qs[k - 16] >> 4 })
                    }
                    _ => {
                        let at = if has_m { 4 } else { 2 };
                        let qh = u32::from_le_bytes(blk[at..at + 4].try_into().expect("4 bytes"));
                        let qs = &blk[at + 4..];
                        let low = |k: usize| if k < 16 { qs[k] & 0x0F } else { qs[k - 16] >> 4 };
                        std::array::from_fn(|k| low(k) | (((qh >> k) & 1) as u8) << 4)
                    }
                };
                for (k, &v) in vals.iter().enumerate() {
                    let col = (b * QK + k) * col_bytes;
                    match bits {
                        Bits::Eight => q[col + g * QK + s] = v,
                        _ => {
                            q[col + g * 16 + s % 16] |= if s < 16 { v & 0x0F } else { (v & 0x0F) << 4 };
                            if bits == Bits::Five && v & 0x10 != 0 {
                                q[col + groups * 16 + g * 4 + s / 8] |= 1 << (s % 8);
                            }
                        }
                    }
                }
            }
        }
        Ok(QuantColumns { n_inputs: cols, n_outputs: rows, bits, offset, groups, col_bytes, q, d, m })
    }

    /// Bytes a column of a `dtype` matrix with `n_outputs` outputs takes, with its share of the
    /// block scales (what a product reads per input when most inputs of a block are kept).
    pub fn bytes_per_input_of(dtype: DType, n_outputs: usize) -> Option<usize> {
        Self::column_bytes(dtype, n_outputs).map(|(quants, scales)| quants + scales)
    }

    /// Bytes a product reads per input on average when it takes about `kept` of the inputs,
    /// scattered: the kept columns' quants, and every block's scales for all outputs where the
    /// block holds a kept input.
    pub fn bytes_read_per_input(dtype: DType, n_outputs: usize, kept: f64) -> Option<f64> {
        let (quants, scales) = Self::column_bytes(dtype, n_outputs)?;
        let block_kept = 1.0 - (1.0 - kept).powi(QK as i32);
        Some(kept * quants as f64 + block_kept * scales as f64)
    }

    /// (quant bytes of one column, its share of the block scales) for a `dtype` matrix with
    /// `n_outputs` outputs, as [`QuantColumns::from_mat`] lays them out.
    fn column_bytes(dtype: DType, n_outputs: usize) -> Option<(usize, usize)> {
        let (bits, scale_bytes) = match dtype {
            DType::Q4_0 => (Bits::Four, 2),
            DType::Q4_1 => (Bits::Four, 4),
            DType::Q5_0 => (Bits::Five, 2),
            DType::Q5_1 => (Bits::Five, 4),
            DType::Q8_0 => (Bits::Eight, 2),
            _ => return None,
        };
        let groups = bits.groups(n_outputs);
        Some((groups * bits.group_bytes(), groups * scale_bytes))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.q.len() + 2 * (self.d.len() + self.m.len())
    }

    /// Column `j` (input `j` of W) dequantized into `out` (`n_outputs`), for tests.
    pub fn column_f32(&self, j: usize, out: &mut [f32]) {
        let b = j / QK;
        let padded = self.groups * QK;
        for (o, v) in out.iter_mut().enumerate().take(self.n_outputs) {
            let q = self.quant(j, o);
            let m = self.m.get(b * padded + o).map_or(0.0, |m| m.to_f32());
            *v = self.d[b * padded + o].to_f32() * (q + self.offset) + m;
        }
    }

    /// Fetches the first bytes of groups `g0..g0 + n` of columns `idx` (the next block's, while
    /// this one is added): a block's columns are scattered, and short ones end before the
    /// hardware prefetcher has seen them.
    fn prefetch_columns(&self, idx: &[u32], g0: usize, n: usize) {
        let gb = match self.bits {
            Bits::Eight => QK,
            _ => 16,
        };
        let len = (n * gb).min(PREFETCH_BYTES);
        for &j in idx {
            let col = j as usize * self.col_bytes;
            prefetch_lines(self.q[col + g0 * gb..].as_ptr(), len);
            if self.bits == Bits::Five {
                prefetch_lines(self.q[col + self.groups * 16 + g0 * 4..].as_ptr(), (n * 4).min(PREFETCH_BYTES));
            }
        }
    }

    fn quant(&self, j: usize, o: usize) -> f32 {
        let (g, s) = (o / QK, o % QK);
        let c = &self.q[j * self.col_bytes..(j + 1) * self.col_bytes];
        match self.bits {
            Bits::Eight => c[g * QK + s] as i8 as f32,
            _ => {
                let n = c[g * 16 + s % 16];
                let low = if s < 16 { n & 0x0F } else { n >> 4 };
                let high = if self.bits == Bits::Five { (c[self.groups * 16 + g * 4 + s / 8] >> (s % 8)) & 1 } else { 0 };
                (low | high << 4) as f32
            }
        }
    }
}

/// Scratch of [`columns_axpy`], kept by the caller so a decode step allocates nothing.
#[derive(Default)]
pub struct ColumnsScratch {
    out: Vec<f32>,         // (groups · 32)
    pairs: Vec<(u32, f32)>, // the indices sorted, when they come unsorted
    idx: Vec<u32>,
    coef: Vec<f32>,
}

/// A body of [`columns_axpy`]: the same sums, with the instructions of a CPU level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnsKernel {
    /// Any CPU.
    Portable,
    /// AVX2 + FMA + F16C (x86-64-v3): eight outputs per register.
    Avx2,
}

impl ColumnsKernel {
    /// The kernels this CPU runs, slowest first (tests run each).
    pub fn detected() -> Vec<ColumnsKernel> {
        let mut out = vec![ColumnsKernel::Portable];
        if has_avx2() {
            out.push(ColumnsKernel::Avx2);
        }
        out
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> ColumnsKernel {
        if has_avx2() { ColumnsKernel::Avx2 } else { ColumnsKernel::Portable }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `out = Σ_k coef[k] · W[:, idx[k]]` (`out` is `(m.n_outputs)`); indices `< m.n_inputs`, in any
/// order (ascending ones are taken as they are).
pub fn columns_axpy(m: &QuantColumns, idx: &[u32], coef: &[f32], out: &mut [f32], scratch: &mut ColumnsScratch) -> Result<()> {
    columns_axpy_with(ColumnsKernel::best(), m, idx, coef, out, scratch)
}

/// [`columns_axpy`] with a chosen body (a kernel the CPU lacks runs the portable one).
pub fn columns_axpy_with(kernel: ColumnsKernel, m: &QuantColumns, idx: &[u32], coef: &[f32], out: &mut [f32], scratch: &mut ColumnsScratch) -> Result<()> {
    if idx.len() != coef.len() || out.len() != m.n_outputs || idx.iter().any(|&j| j as usize >= m.n_inputs) {
        return Err(KernelError::Shape {
            op: "columns_axpy",
            expected: format!("as many coefficients as indices, all indices < {}, out of {}", m.n_inputs, m.n_outputs),
            got: format!("{} indices, {} coefficients, out of {}", idx.len(), coef.len(), out.len()),
        });
    }
    let ColumnsScratch { out: acc, pairs, idx: sorted_idx, coef: sorted_coef } = scratch;
    let (idx, coef) = if idx.windows(2).all(|w| w[0] <= w[1]) {
        (idx, coef)
    } else {
        pairs.clear();
        pairs.extend(idx.iter().copied().zip(coef.iter().copied()));
        pairs.sort_unstable_by_key(|p| p.0);
        sorted_idx.clear();
        sorted_coef.clear();
        sorted_idx.extend(pairs.iter().map(|p| p.0));
        sorted_coef.extend(pairs.iter().map(|p| p.1));
        (&sorted_idx[..], &sorted_coef[..])
    };
    acc.clear();
    acc.resize(m.groups * QK, 0.0);
    let bytes = m.groups * idx.len() * m.bits.group_bytes();
    let tasks = rayon::current_num_threads().min(bytes / MIN_TASK_BYTES).min(m.groups / 2).max(1);
    let per_task = m.groups.div_ceil(tasks).next_multiple_of(2); // the AVX2 bodies take pairs of groups
    let avx2 = kernel == ColumnsKernel::Avx2 && has_avx2();
    acc.par_chunks_mut(per_task * QK).enumerate().for_each(|(t, y)| {
        let g0 = t * per_task;
        let run_end = |i: usize| i + idx[i..].iter().take_while(|&&j| j as usize / QK == idx[i] as usize / QK).take(QK).count();
        let mut i = 0;
        let mut e = if idx.is_empty() { 0 } else { run_end(0) };
        while i < idx.len() {
            let b = idx[i] as usize / QK;
            let next = if e < idx.len() { run_end(e) } else { e };
            m.prefetch_columns(&idx[e..next], g0, y.len() / QK);
            let block = Block { b, idx: &idx[i..e], coef: &coef[i..e], sum: coef[i..e].iter().sum() };
            add_block(avx2, m, &block, g0, y);
            (i, e) = (e, next);
        }
    });
    out.copy_from_slice(&acc[..m.n_outputs]);
    Ok(())
}

/// The columns of one scale block a product takes (at most 32: a repeated index starts another).
struct Block<'a> {
    b: usize,
    idx: &'a [u32],
    coef: &'a [f32],
    sum: f32,
}

/// Adds one block's columns into groups `g0..` of the outputs (`y` holds whole groups, pairs of
/// them for 4 and 5 bits), with the AVX2 body when `avx2` (checked present by the caller).
fn add_block(avx2: bool, m: &QuantColumns, blk: &Block<'_>, g0: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `has_avx2` confirmed AVX2, FMA and F16C; indices were checked by
        // `columns_axpy_with`; `y` holds whole groups `g0..` of the padded outputs.
        return unsafe { x86::block(m, blk, g0, y) };
    }
    let _ = avx2;
    block_portable(m, blk, g0, y);
}

/// [`add_block`] on any CPU.
fn block_portable(m: &QuantColumns, blk: &Block<'_>, g0: usize, y: &mut [f32]) {
    let padded = m.groups * QK;
    for (gl, yg) in y.chunks_exact_mut(QK).enumerate() {
        let g = g0 + gl;
        let mut acc = [0f32; QK];
        for (&j, &c) in blk.idx.iter().zip(blk.coef) {
            for (s, a) in acc.iter_mut().enumerate() {
                *a += c * m.quant(j as usize, g * QK + s);
            }
        }
        let at = blk.b * padded + g * QK;
        for (s, v) in yg.iter_mut().enumerate() {
            let mm = m.m.get(at + s).map_or(0.0, |x| x.to_f32());
            *v += m.d[at + s].to_f32() * (acc[s] + m.offset * blk.sum) + mm * blk.sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{prefetch_lines, Bits, Block, QuantColumns, QK};

    /// Bytes ahead of the current group a column is prefetched.
    const AHEAD: usize = 512;

    /// [`super::block_portable`] with eight outputs per register.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present; every index is `< m.n_inputs` and in block `blk.b`; `y`
    /// holds whole groups starting at group `g0` (pairs of them for 4 and 5 bits).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block(m: &QuantColumns, blk: &Block<'_>, g0: usize, y: &mut [f32]) {
        match m.bits {
            Bits::Four => block_int::<4>(m, blk, g0, y),
            Bits::Five => block_int::<5>(m, blk, g0, y),
            Bits::Eight => block_f32(m, blk, g0, y),
        }
    }

    /// Q4/Q5 columns in integers, as the dense product does: the block's coefficients quantized
    /// to 8 bits with one scale (`c ≈ s·xq`), two columns' quants interleaved byte by byte and
    /// multiplied with their two coefficients by `vpmaddubsw` (one i16 per output), flushed to
    /// i32 before an i16 could overflow, then `out += d·(s·Σ xq q + offset·s·Σ xq) + m·s·Σ xq`.
    /// 64 outputs (two groups: one 256-bit load of a column's nibbles) per pass.
    #[inline(always)]
    unsafe fn block_int<const BITS: usize>(m: &QuantColumns, blk: &Block<'_>, g0: usize, y: &mut [f32]) {
        let amax = blk.coef.iter().fold(0f32, |a, c| a.max(c.abs()));
        if amax == 0.0 {
            return;
        }
        let (s, inv) = (amax / 127.0, 127.0 / amax);
        // Pairs of columns and their coefficients (an odd last column pairs with itself at 0).
        let n = blk.idx.len();
        let mut cols = [std::ptr::null::<u8>(); QK + 1];
        let mut xq = [0i8; QK + 1];
        let mut qsum = 0i32;
        for (k, (&j, &c)) in blk.idx.iter().zip(blk.coef).enumerate().take(QK) {
            cols[k] = m.q.as_ptr().add(j as usize * m.col_bytes);
            xq[k] = (c * inv).round() as i8;
            qsum += xq[k] as i32;
        }
        if n % 2 == 1 {
            cols[n] = cols[n - 1];
        }
        let pairs = n.div_ceil(2);
        // Largest |pair sum| is 2·127·(2^BITS − 1): 3810 (4 bits) or 7874 (5 bits).
        let flush_every = if BITS == 4 { 8 } else { 4 };
        let sq = s * qsum as f32;
        let off = _mm256_set1_ps(m.offset * sq);
        let sqv = _mm256_set1_ps(sq);
        let sv = _mm256_set1_ps(s);
        let nib = _mm256_set1_epi8(0x0F);
        let padded = m.groups * QK;
        let bits_at = m.groups * 16;
        for (gl, yg) in y.chunks_exact_mut(2 * QK).enumerate() {
            let g = g0 + 2 * gl;
            let mut acc = [_mm256_setzero_si256(); 8]; // i32: group g + h, outputs 8i.., at [4h + i]
            let mut acc16 = [_mm256_setzero_si256(); 4];
            for p in 0..pairs {
                let (a, b) = (cols[2 * p], cols[2 * p + 1]);
                // SAFETY: columns hold `groups` (even) groups of nibbles, then their fifth bits.
                prefetch_lines(a.wrapping_add(g * 16 + AHEAD), 1);
                prefetch_lines(b.wrapping_add(g * 16 + AHEAD), 1);
                let (va, vb) = (_mm256_loadu_si256(a.add(g * 16).cast()), _mm256_loadu_si256(b.add(g * 16).cast()));
                // Lanes: group g, group g + 1. `lo`: outputs 0..16 of each; `hi`: 16..32.
                let (mut alo, mut ahi) = (_mm256_and_si256(va, nib), _mm256_and_si256(_mm256_srli_epi16::<4>(va), nib));
                let (mut blo, mut bhi) = (_mm256_and_si256(vb, nib), _mm256_and_si256(_mm256_srli_epi16::<4>(vb), nib));
                if BITS == 5 {
                    let (ah, bh) = (fifth_bits(a.add(bits_at + g * 4)), fifth_bits(b.add(bits_at + g * 4)));
                    alo = _mm256_or_si256(alo, ah.0);
                    ahi = _mm256_or_si256(ahi, ah.1);
                    blo = _mm256_or_si256(blo, bh.0);
                    bhi = _mm256_or_si256(bhi, bh.1);
                }
                let x = _mm256_set1_epi16(((xq[2 * p] as u8 as u16) | ((xq[2 * p + 1] as u8 as u16) << 8)) as i16);
                let inter = [
                    _mm256_unpacklo_epi8(alo, blo), // outputs 0..8
                    _mm256_unpackhi_epi8(alo, blo), // 8..16
                    _mm256_unpacklo_epi8(ahi, bhi), // 16..24
                    _mm256_unpackhi_epi8(ahi, bhi), // 24..32
                ];
                for (a16, v) in acc16.iter_mut().zip(inter) {
                    *a16 = _mm256_add_epi16(*a16, _mm256_maddubs_epi16(v, x));
                }
                if (p + 1) % flush_every == 0 || p + 1 == pairs {
                    for (i, a16) in acc16.iter_mut().enumerate() {
                        let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(*a16));
                        let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(*a16));
                        acc[i] = _mm256_add_epi32(acc[i], lo);
                        acc[4 + i] = _mm256_add_epi32(acc[4 + i], hi);
                        *a16 = _mm256_setzero_si256();
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                let o = (k / 4) * QK + (k % 4) * 8; // within the pair of groups
                let at = blk.b * padded + g * QK + o;
                let d = _mm256_cvtph_ps(_mm_loadu_si128(m.d.as_ptr().add(at).cast()));
                let yp = yg.as_mut_ptr().add(o);
                let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*a), sv, off);
                let mut out = _mm256_fmadd_ps(d, t, _mm256_loadu_ps(yp));
                if !m.m.is_empty() {
                    let mm = _mm256_cvtph_ps(_mm_loadu_si128(m.m.as_ptr().add(at).cast()));
                    out = _mm256_fmadd_ps(mm, sqv, out);
                }
                _mm256_storeu_ps(yp, out);
            }
        }
    }

    /// The fifth bits of two groups (u32 words at `p`, `p + 4`) as 0x10 bytes, laid out as the
    /// nibbles: (`lo`: outputs 0..16 of each group, `hi`: 16..32).
    #[inline(always)]
    unsafe fn fifth_bits(p: *const u8) -> (__m256i, __m256i) {
        let e0 = bits_to_bytes(p.cast::<i32>().read_unaligned());
        let e1 = bits_to_bytes(p.add(4).cast::<i32>().read_unaligned());
        (_mm256_permute2x128_si256::<0x20>(e0, e1), _mm256_permute2x128_si256::<0x31>(e0, e1))
    }

    /// Byte `i` is 0x10 where bit `i` of `w` is set.
    #[inline(always)]
    unsafe fn bits_to_bytes(w: i32) -> __m256i {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(w),
            _mm256_setr_epi64x(0x0000_0000_0000_0000, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10))
    }

    /// Q8_0 columns in f32: each column's 32 bytes of a group become four registers of f32 and
    /// four FMAs with its coefficient; `out += d·Σ c q` per group.
    #[inline(always)]
    unsafe fn block_f32(m: &QuantColumns, blk: &Block<'_>, g0: usize, y: &mut [f32]) {
        let padded = m.groups * QK;
        let q = m.q.as_ptr();
        for (gl, yg) in y.chunks_exact_mut(QK).enumerate() {
            let g = g0 + gl;
            let mut a = [_mm256_setzero_ps(); 4];
            for (&j, &c) in blk.idx.iter().zip(blk.coef) {
                // SAFETY: column `j < n_inputs` holds `groups` groups of 32 bytes; `g < groups`.
                let p = q.add(j as usize * m.col_bytes + g * QK);
                prefetch_lines(p.wrapping_add(AHEAD), 1);
                let c = _mm256_set1_ps(c);
                let lo = _mm_loadu_si128(p.cast());
                let hi = _mm_loadu_si128(p.add(16).cast());
                let v = [
                    _mm256_cvtepi8_epi32(lo),
                    _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)),
                    _mm256_cvtepi8_epi32(hi),
                    _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)),
                ];
                for (a, v) in a.iter_mut().zip(v) {
                    *a = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(v), *a);
                }
            }
            let at = blk.b * padded + g * QK;
            for (k, a) in a.iter().enumerate() {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(m.d.as_ptr().add(at + 8 * k).cast()));
                let yp = yg.as_mut_ptr().add(8 * k);
                _mm256_storeu_ps(yp, _mm256_fmadd_ps(d, *a, _mm256_loadu_ps(yp)));
            }
        }
    }
}
