//! The predictor's second stage, `logits = b2 + W2 · hidden`, in integers: W2 is 8-bit per
//! output row, `hidden` (≥ 0 after the relu) is quantized to 7 bits with one scale per token,
//! and each logit's sum of `rank` products is an exact i32, so every body below gives the
//! same sums bit for bit; the float epilogue is one separate multiply and add per logit, the
//! same in every body. This is the larger half of a predictor's cost (`n_out · rank` of its
//! `rank · dim + n_out · rank` multiply-adds).
//!
//! Layout: W2 is kept in blocks of [`OUTS`] outputs × [`GROUP`] ranks (64 bytes, output-major
//! within the block, `block[o·4 + k] = W2[16b + o][4g + k]`), blocks of one output block
//! consecutive over the rank groups; rows and ranks past the end are zero. That is the operand
//! of one 512-bit `vpdpbusd` against the four hidden bytes of a group broadcast, and of two
//! 256-bit `vpmaddubsw` + `vpmaddwd` (7-bit hidden × 8-bit weights: a pair sums to at most
//! 2·127·127 < 2¹⁵, so the 16-bit step never saturates).

/// Outputs per block.
pub(crate) const OUTS: usize = 16;
/// Ranks per group (the bytes one `vpdpbusd` lane sums).
pub(crate) const GROUP: usize = 4;
/// Largest quantized hidden value: 7 bits, see the module header.
const HQ_MAX: f32 = 127.0;

/// A body of the second stage: the same sums, with the instructions of a CPU level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictKernel {
    /// Any CPU.
    Portable,
    /// `vpmaddubsw` + `vpmaddwd`, two blocks per pass.
    Avx2,
    /// `vpdpbusd` (AVX512-VNNI), four blocks per pass, the selection by `vpcompressd`.
    Avx512Vnni,
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vnni")
}

impl PredictKernel {
    /// The kernels this CPU runs, slowest first (tests run each).
    pub fn detected() -> Vec<PredictKernel> {
        let mut out = vec![PredictKernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                out.push(PredictKernel::Avx2);
            }
            if has_vnni() {
                out.push(PredictKernel::Avx512Vnni);
            }
        }
        out
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> PredictKernel {
        static BEST: std::sync::OnceLock<PredictKernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *PredictKernel::detected().last().unwrap_or(&PredictKernel::Portable))
    }

    /// What [`Stage2::run`] runs for this kernel on this CPU (a kernel the CPU lacks runs the
    /// portable body).
    fn available(self) -> PredictKernel {
        match self {
            #[cfg(target_arch = "x86_64")]
            PredictKernel::Avx512Vnni if has_vnni() => self,
            #[cfg(target_arch = "x86_64")]
            PredictKernel::Avx2 if has_avx2() => self,
            _ => PredictKernel::Portable,
        }
    }
}

/// W2 in blocks, with its per-row scales and the biases.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stage2 {
    pub(crate) n_out: usize,
    pub(crate) rank: usize,
    /// (n_out.div_ceil(16), rank.div_ceil(4), 16, 4)
    blocks: Vec<i8>,
    pub(crate) scale: Vec<f32>, // (n_out)
    pub(crate) bias: Vec<f32>,  // (n_out)
}

impl Stage2 {
    fn groups(&self) -> usize {
        self.rank.div_ceil(GROUP)
    }

    fn n_blocks(&self) -> usize {
        self.n_out.div_ceil(OUTS)
    }

    /// From row-major `w2` (n_out, rank).
    pub(crate) fn new(w2: &[i8], rank: usize, scale: Vec<f32>, bias: Vec<f32>) -> Stage2 {
        let n_out = scale.len();
        debug_assert_eq!(w2.len(), n_out * rank);
        let groups = rank.div_ceil(GROUP);
        let mut blocks = vec![0i8; n_out.div_ceil(OUTS) * groups * OUTS * GROUP];
        for (j, row) in w2.chunks_exact(rank).enumerate() {
            let (b, o) = (j / OUTS, j % OUTS);
            for (r, &w) in row.iter().enumerate() {
                blocks[((b * groups + r / GROUP) * OUTS + o) * GROUP + r % GROUP] = w;
            }
        }
        Stage2 { n_out, rank, blocks, scale, bias }
    }

    /// Row-major W2 (n_out, rank), as stored in files.
    pub(crate) fn rows(&self) -> Vec<i8> {
        let groups = self.groups();
        let mut w2 = Vec::with_capacity(self.n_out * self.rank);
        for j in 0..self.n_out {
            let (b, o) = (j / OUTS, j % OUTS);
            w2.extend((0..self.rank).map(|r| self.blocks[((b * groups + r / GROUP) * OUTS + o) * GROUP + r % GROUP]));
        }
        w2
    }

    /// Bytes of the 8-bit weights as stored (without the padding).
    pub(crate) fn weight_bytes(&self) -> usize {
        self.n_out * self.rank
    }

    /// `logits = b2 + W2 · hidden` and, when `out` is given, the sorted indices `j` with
    /// `logits[j] > threshold` in it. `hq` and `sums` are scratch.
    pub(crate) fn run(&self, kernel: PredictKernel, hidden: &[f32], threshold: f32, s: &mut Stage2Scratch, logits: &mut [f32], out: Option<&mut Vec<u32>>) {
        debug_assert_eq!(hidden.len(), self.rank);
        debug_assert_eq!(logits.len(), self.n_out);
        let h_scale = quantize_hidden(hidden, self.groups(), &mut s.hq);
        s.sums.resize(self.n_blocks() * OUTS, 0);
        let kernel = kernel.available();
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` keeps this kernel only where AVX512-F/BW/VNNI are present; the
            // blocks hold `n_blocks · groups` blocks, `hq` `groups` words, `sums` `n_blocks · 16`.
            PredictKernel::Avx512Vnni => unsafe { x86::sums_vnni(&self.blocks, self.groups(), &s.hq, &mut s.sums) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2.
            PredictKernel::Avx2 => unsafe { x86::sums_avx2(&self.blocks, self.groups(), &s.hq, &mut s.sums) },
            _ => sums_portable(&self.blocks, self.groups(), &s.hq, &mut s.sums),
        }
        let sums = &s.sums[..self.n_out];
        match (kernel, out) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; the four slices are `n_out` long.
            (PredictKernel::Avx512Vnni, Some(out)) => unsafe { x86::epilogue_select(sums, &self.scale, &self.bias, h_scale, threshold, logits, out) },
            (_, out) => {
                epilogue(sums, &self.scale, &self.bias, h_scale, logits);
                if let Some(out) = out {
                    select(logits, threshold, out);
                }
            }
        }
    }
}

/// Scratch of [`Stage2::run`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Stage2Scratch {
    hq: Vec<u32>,   // (groups) four 7-bit hidden values per word, little-endian
    sums: Vec<i32>, // (n_blocks · 16)
}

/// `hq` = round(hidden / scale) with `scale = max(hidden) / 127`, four per word, zero past
/// the end; returns the scale (0 when every value is 0). `hidden` is ≥ 0 (after the relu).
fn quantize_hidden(hidden: &[f32], groups: usize, hq: &mut Vec<u32>) -> f32 {
    let max = hidden.iter().fold(0.0f32, |m, &h| m.max(h));
    let scale = max / HQ_MAX;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    hq.clear();
    hq.resize(groups, 0);
    for (r, &h) in hidden.iter().enumerate() {
        // h·inv is in [0, 127] up to rounding: + 0.5 and truncation round to nearest.
        let q = (h * inv + 0.5).min(HQ_MAX) as u32;
        hq[r / GROUP] |= q << (8 * (r % GROUP));
    }
    scale
}

/// The float epilogue of every body: `logit = b2 + (scale · h_scale) · sum`, a multiply and an
/// add, not fused.
#[inline(always)]
fn epilogue(sums: &[i32], scale: &[f32], bias: &[f32], h_scale: f32, logits: &mut [f32]) {
    for (((z, &s), &w), &b) in logits.iter_mut().zip(sums).zip(scale).zip(bias) {
        *z = b + (w * h_scale) * s as f32;
    }
}

/// `out` = the sorted indices `j` with `logits[j] > threshold` (without a branch per logit).
fn select(logits: &[f32], threshold: f32, out: &mut Vec<u32>) {
    out.clear();
    out.resize(logits.len(), 0);
    let mut n = 0;
    for (j, &z) in logits.iter().enumerate() {
        out[n] = j as u32;
        n += usize::from(z > threshold);
    }
    out.truncate(n);
}

/// The portable sums: `sums[16b + o] = Σ_g Σ_k hq[g].byte(k) · block(b, g)[4o + k]`.
fn sums_portable(blocks: &[i8], groups: usize, hq: &[u32], sums: &mut [i32]) {
    for (blk, acc) in blocks.chunks_exact(groups * OUTS * GROUP).zip(sums.chunks_exact_mut(OUTS)) {
        acc.fill(0);
        for (w, &word) in blk.chunks_exact(OUTS * GROUP).zip(hq) {
            let h = word.to_le_bytes();
            for (a, w) in acc.iter_mut().zip(w.chunks_exact(GROUP)) {
                *a += (0..GROUP).map(|k| i32::from(h[k]) * i32::from(w[k])).sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{GROUP, OUTS};

    const BLOCK: usize = OUTS * GROUP;

    /// [`super::sums_portable`] with `vpdpbusd`, four output blocks per pass so four sums are
    /// in flight.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn sums_vnni(blocks: &[i8], groups: usize, hq: &[u32], sums: &mut [i32]) {
        let n_blocks = sums.len() / OUTS;
        assert!(blocks.len() >= n_blocks * groups * BLOCK && hq.len() >= groups);
        let (w, s) = (blocks.as_ptr(), sums.as_mut_ptr());
        let mut b = 0;
        while b + 4 <= n_blocks {
            let base = w.add(b * groups * BLOCK);
            let stride = groups * BLOCK;
            let mut acc = [_mm512_setzero_si512(); 4];
            for (g, &word) in hq[..groups].iter().enumerate() {
                let h = _mm512_set1_epi32(word as i32);
                for (i, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_loadu_si512(base.add(i * stride + g * BLOCK).cast());
                    *a = _mm512_dpbusd_epi32(*a, h, wv);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm512_storeu_si512(s.add((b + i) * OUTS).cast(), *a);
            }
            b += 4;
        }
        for b in b..n_blocks {
            let base = w.add(b * groups * BLOCK);
            let mut acc = _mm512_setzero_si512();
            for (g, &word) in hq[..groups].iter().enumerate() {
                let wv = _mm512_loadu_si512(base.add(g * BLOCK).cast());
                acc = _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(word as i32), wv);
            }
            _mm512_storeu_si512(s.add(b * OUTS).cast(), acc);
        }
    }

    /// `acc += the four-byte sums of h · the 32 weights at p` (eight outputs).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn step(acc: __m256i, h: __m256i, p: *const i8) -> __m256i {
        let wv = _mm256_loadu_si256(p.cast());
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(h, wv), _mm256_set1_epi16(1)))
    }

    /// [`super::sums_portable`] with `vpmaddubsw` + `vpmaddwd` (eight outputs per 256-bit
    /// register), two output blocks per pass.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sums_avx2(blocks: &[i8], groups: usize, hq: &[u32], sums: &mut [i32]) {
        let n_blocks = sums.len() / OUTS;
        assert!(blocks.len() >= n_blocks * groups * BLOCK && hq.len() >= groups);
        let (w, s) = (blocks.as_ptr(), sums.as_mut_ptr());
        let mut b = 0;
        while b < n_blocks {
            let pair = if b + 2 <= n_blocks { 2 } else { 1 };
            let base = w.add(b * groups * BLOCK);
            let stride = groups * BLOCK;
            let mut acc = [_mm256_setzero_si256(); 4];
            for (g, &word) in hq[..groups].iter().enumerate() {
                let h = _mm256_set1_epi32(word as i32);
                for i in 0..pair {
                    let p = base.add(i * stride + g * BLOCK);
                    acc[2 * i] = step(acc[2 * i], h, p);
                    acc[2 * i + 1] = step(acc[2 * i + 1], h, p.add(BLOCK / 2));
                }
            }
            for (i, a) in acc[..2 * pair].iter().enumerate() {
                _mm256_storeu_si256(s.add(b * OUTS + i * OUTS / 2).cast(), *a);
            }
            b += pair;
        }
    }

    /// [`super::epilogue`] and [`super::select`] sixteen logits at a time: the same multiply
    /// and add, the indices over the threshold written by `vpcompressd`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn epilogue_select(sums: &[i32], scale: &[f32], bias: &[f32], h_scale: f32, threshold: f32, logits: &mut [f32], out: &mut Vec<u32>) {
        let n = sums.len();
        assert!(scale.len() == n && bias.len() == n && logits.len() == n);
        out.clear();
        out.reserve(n);
        let (hs, thr) = (_mm512_set1_ps(h_scale), _mm512_set1_ps(threshold));
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let dst = out.as_mut_ptr();
        let mut kept = 0usize;
        for j in (0..n).step_by(OUTS) {
            let valid: __mmask16 = if n - j >= OUTS { !0 } else { (1u16 << (n - j)) - 1 };
            let sum = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(valid, sums.as_ptr().add(j)));
            let w = _mm512_maskz_loadu_ps(valid, scale.as_ptr().add(j));
            let b = _mm512_maskz_loadu_ps(valid, bias.as_ptr().add(j));
            let z = _mm512_add_ps(b, _mm512_mul_ps(_mm512_mul_ps(w, hs), sum));
            _mm512_mask_storeu_ps(logits.as_mut_ptr().add(j), valid, z);
            let over = _mm512_mask_cmp_ps_mask(valid, z, thr, _CMP_GT_OQ);
            let idx = _mm512_add_epi32(lane, _mm512_set1_epi32(j as i32));
            _mm512_mask_compressstoreu_epi32(dst.add(kept).cast(), over, idx);
            kept += over.count_ones() as usize;
        }
        // SAFETY: `kept ≤ n` indices were written, within the capacity reserved above.
        out.set_len(kept);
    }
}
