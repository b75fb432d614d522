//! Weight rows unpacked once for many tokens (the prefill's matrix-matrix products).
//!
//! Every 4/5/6-bit format decodes to the same shape: an unsigned quant per element and, per group
//! of 16, a scale and an offset, `w_j = d_g·q_j + m_g` (Q4_0: `q − 8` becomes `m = −8d`; Q4_K: a
//! sub-block's `d·sc` and `−dmin·m`; Q6_K: `d·sc_g` and `−32·d·sc_g`). A tile of rows is unpacked
//! once into [`Unpacked`], then every token's 8-bit activations are dotted with it by one simple
//! kernel: `Σ_b d_a,b·Σ_g (d_g·Σ_{j∈g} q_j y_j + m_g·S_g)`, `S_g` the activations' group sums.
//! The per-format bit unpacking (nibbles, fifth bits, 6-bit scales) is paid once per tile instead
//! of once per token. Q8_0 is not unpacked: its quants are already bytes.

use super::common::f16_at;
use super::q8::{Q8Ref, Q8_BLOCK};
use super::DType;

/// Elements per scale group.
const GROUP: usize = 16;

/// Rows in unpacked form: `w[r][j] = dv[r][j / 32][4·((j % 32) / 16)] · q[r][j] + m[r][j / 16]`.
#[derive(Clone, Debug, Default)]
pub struct Unpacked {
    pub rows: usize,
    pub cols: usize,
    /// (rows, cols): unsigned quants, at most 63.
    pub q: Vec<u8>,
    /// (rows, cols / 32, 8): per block of 32, the first group's scale in lanes 0–3 and the
    /// second's in lanes 4–7 (the lane order of the integer dot of one block).
    pub dv: Vec<f32>,
    /// (rows, cols / 16): per group, its offset.
    pub m: Vec<f32>,
    /// (rows, steps, 16), steps = ⌈cols / 256⌉: per step of 8 blocks of a row, the scales of its
    /// 16 groups (the lanes of `dv` once each) in the order [`STEP_GROUPS`], zero past the row's
    /// last group: the 512-bit kernel's layout.
    pub ds: Vec<f32>,
    /// `m` in the layout of `ds`.
    pub m_step: Vec<f32>,
}

/// Elements per step of [`Unpacked::ds`] and [`Unpacked::m_step`] (8 blocks).
pub const STEP: usize = 8 * Q8_BLOCK;

/// The order of the 16 groups of a step of 8 blocks in [`Unpacked::ds`] and
/// [`Unpacked::m_step`]: position `4L + k` holds group `4k + L` (group `g` = the half `g % 2` of
/// block `g / 2` of the step).
pub const STEP_GROUPS: [usize; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

/// Whether [`unpack_rows`] handles `dtype`.
pub fn can_unpack(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q4_K | DType::Q5_K | DType::Q6_K)
}

/// Unpacks the rows in `bytes` (`row_bytes` each, `cols` elements of `dtype`) into `out`,
/// reusing its buffers. Returns false (and leaves `out` empty) for formats [`can_unpack`] refuses
/// or when the sizes do not agree.
pub fn unpack_rows(dtype: DType, bytes: &[u8], row_bytes: usize, cols: usize, out: &mut Unpacked) -> bool {
    let ok = can_unpack(dtype)
        && cols % dtype.block_len() == 0
        && dtype.row_bytes(cols).ok() == Some(row_bytes)
        && row_bytes > 0
        && bytes.len() % row_bytes == 0;
    let rows = if ok { bytes.len() / row_bytes } else { 0 };
    out.rows = rows;
    out.cols = cols;
    out.q.resize(rows * cols, 0);
    out.dv.resize(rows * cols / Q8_BLOCK * 8, 0.0);
    out.m.resize(rows * cols / GROUP, 0.0);
    out.ds.resize(rows * cols.div_ceil(STEP) * 16, 0.0);
    out.m_step.resize(rows * cols.div_ceil(STEP) * 16, 0.0);
    if !ok {
        return false;
    }
    let bb = dtype.block_bytes();
    let per_block = dtype.block_len() / Q8_BLOCK; // chunks of 32 per format block
    let chunks = out.q.chunks_exact_mut(Q8_BLOCK).zip(out.dv.chunks_exact_mut(8)).zip(out.m.chunks_exact_mut(2));
    let mut chunks = chunks.map(|((q, dv), m)| Chunk { q, dv, m });
    for block in bytes.chunks_exact(bb) {
        for c in 0..per_block {
            let Some(mut ch) = chunks.next() else { return false };
            match dtype {
                DType::Q4_0 => legacy(block, &mut ch, Legacy { bits5: false, has_min: false }),
                DType::Q4_1 => legacy(block, &mut ch, Legacy { bits5: false, has_min: true }),
                DType::Q5_0 => legacy(block, &mut ch, Legacy { bits5: true, has_min: false }),
                DType::Q5_1 => legacy(block, &mut ch, Legacy { bits5: true, has_min: true }),
                DType::Q4_K => q45_k(block, c, &mut ch, false),
                DType::Q5_K => q45_k(block, c, &mut ch, true),
                DType::Q6_K => q6_k(block, c, &mut ch),
                _ => return false,
            }
        }
    }
    step_order(out);
    true
}

/// Fills `ds` and `m_step` from `dv` and `m` (see their layout).
fn step_order(u: &mut Unpacked) {
    let (groups, steps) = (u.cols / GROUP, u.cols.div_ceil(STEP));
    for r in 0..u.rows {
        for s in 0..steps {
            let at = (r * steps + s) * 16;
            for (i, &g) in STEP_GROUPS.iter().enumerate() {
                let g = 16 * s + g;
                let (d, m) = match g < groups {
                    true => (u.dv[(r * groups + g) * 4], u.m[r * groups + g]),
                    false => (0.0, 0.0),
                };
                u.ds[at + i] = d;
                u.m_step[at + i] = m;
            }
        }
    }
}

/// One chunk of 32 elements of the output.
struct Chunk<'a> {
    q: &'a mut [u8],  // (32)
    dv: &'a mut [f32], // (8)
    m: &'a mut [f32], // (2)
}

impl Chunk<'_> {
    fn scales(&mut self, d: [f32; 2], m: [f32; 2]) {
        self.dv[..4].fill(d[0]);
        self.dv[4..].fill(d[1]);
        self.m.copy_from_slice(&m);
    }
}

/// Which legacy format: Q4_0 `{d, qs}`, Q4_1 `{d, m, qs}`, Q5_0 `{d, qh, qs}`, Q5_1
/// `{d, m, qh, qs}` (ggml-common.h); element `j < 16` is the low nibble of `qs[j]`, `j + 16`
/// the high one, the fifth bit is bit `j` of `qh`.
#[derive(Clone, Copy)]
struct Legacy {
    bits5: bool,
    has_min: bool,
}

fn legacy(b: &[u8], out: &mut Chunk<'_>, f: Legacy) {
    let d = f16_at(b, 0);
    let mut at = 2;
    let m = if f.has_min {
        at += 2;
        f16_at(b, 2)
    } else if f.bits5 {
        -16.0 * d
    } else {
        -8.0 * d
    };
    let qh = if f.bits5 {
        at += 4;
        u32::from_le_bytes([b[at - 4], b[at - 3], b[at - 2], b[at - 1]])
    } else {
        0
    };
    let qs = &b[at..at + 16];
    for j in 0..16 {
        out.q[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        out.q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    out.scales([d, d], [m, m]);
}

/// Chunk `c` of a Q4_K/Q5_K super-block `{d, dmin, scales[12], (qh[32],) qs[128]}`: the low
/// (`c` even) or high nibbles of `qs[32 (c / 2)..]`, plus bit `c` of `qh[l]` (Q5_K);
/// `w = d·sc_c·q − dmin·m_c` (ggml's `get_scale_min_k4`).
fn q45_k(b: &[u8], c: usize, out: &mut Chunk<'_>, bits5: bool) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let s = &b[4..16];
    let (sc, mn) = if c < 4 {
        (s[c] & 63, s[c + 4] & 63)
    } else {
        ((s[c + 4] & 0x0F) | ((s[c - 4] >> 6) << 4), (s[c + 4] >> 4) | ((s[c] >> 6) << 4))
    };
    let qs_at = if bits5 { 48 } else { 16 };
    let q = &b[qs_at + 32 * (c / 2)..][..32];
    let shift = 4 * (c % 2);
    for l in 0..32 {
        let high = if bits5 { ((b[16 + l] >> c) & 1) << 4 } else { 0 };
        out.q[l] = ((q[l] >> shift) & 0x0F) | high;
    }
    let (d, m) = (d * sc as f32, -dmin * mn as f32);
    out.scales([d, d], [m, m]);
}

/// Chunk `c = 4h + k` of a Q6_K super-block `{ql[128], qh[64], scales[16] (i8), d}`: low 4 bits
/// are nibble `k / 2` of `ql[64h + 32 (k % 2)..]`, high 2 bits are bits `2k..` of `qh[32h..]`;
/// `w = d·sc_g·(q − 32)` with one scale per group of 16.
fn q6_k(b: &[u8], c: usize, out: &mut Chunk<'_>) {
    let d = f16_at(b, 208);
    let (h, k) = (c / 4, c % 4);
    let low = &b[64 * h + 32 * (k % 2)..][..32];
    let high = &b[128 + 32 * h..][..32];
    for l in 0..32 {
        out.q[l] = ((low[l] >> (4 * (k / 2))) & 0x0F) | (((high[l] >> (2 * k)) & 3) << 4);
    }
    let sc = |g: usize| d * b[192 + 2 * c + g] as i8 as f32;
    out.scales([sc(0), sc(1)], [-32.0 * sc(0), -32.0 * sc(1)]);
}

// ---------------------------------------------------------------------------------------------
// Dots
// ---------------------------------------------------------------------------------------------

/// `out[r]` = the dot of unpacked row `r` with `acts`, for `r < min(out.len(), u.rows)`; the
/// fastest kernel this CPU supports.
pub fn dot_rows(u: &Unpacked, acts: Q8Ref<'_>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        return x86::dot_rows(u, acts, out);
    }
    dot_rows_portable(u, acts, out)
}

/// [`dot_rows`] for two tokens' activations at once (`out[t]` for `acts[t]`): the 512-bit
/// kernel shares each weight load between them.
pub fn dot_rows2(u: &Unpacked, acts: [Q8Ref<'_>; 2], out: [&mut [f32]; 2]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        return x86::dot_rows2(u, acts, out);
    }
    let [o0, o1] = out;
    dot_rows_portable(u, acts[0], o0);
    dot_rows_portable(u, acts[1], o1);
}

/// Blocks of 32 that row data and `acts` both hold.
#[inline(always)]
fn whole_blocks(u: &Unpacked, acts: Q8Ref<'_>) -> usize {
    (u.cols / Q8_BLOCK)
        .min(acts.qs.len() / Q8_BLOCK)
        .min(acts.d.len())
        .min(acts.sum16.len() / 2)
}

/// The plain-Rust kernel (any target; the oracle of the SIMD one).
pub fn dot_rows_portable(u: &Unpacked, acts: Q8Ref<'_>, out: &mut [f32]) {
    let nb = whole_blocks(u, acts);
    let nblk = u.cols / Q8_BLOCK;
    for (r, o) in out.iter_mut().enumerate().take(u.rows) {
        let mut acc = 0f32;
        for b in 0..nb {
            let q = &u.q[r * u.cols + Q8_BLOCK * b..][..Q8_BLOCK];
            let y = &acts.qs[Q8_BLOCK * b..][..Q8_BLOCK];
            let mut block = 0f32;
            for g in 0..2 {
                let p: i32 = (0..GROUP).map(|j| q[GROUP * g + j] as i32 * y[GROUP * g + j] as i32).sum();
                let dg = u.dv[(r * nblk + b) * 8 + 4 * g];
                let mg = u.m[(r * nblk + b) * 2 + g];
                block += dg * p as f32 + mg * acts.sum16[2 * b + g] as f32;
            }
            acc += acts.d[b] * block;
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "unpacked_x86.rs"]
mod x86;
