//! 8-bit activations for integer dot products (the approach of ggml's `vec_dot_*_q8_*`): the f32
//! activation vector is quantized once per matrix product into blocks of 32 signed bytes with one
//! f32 scale each, plus the sum of every 16 quantized values (for the formats whose blocks carry
//! a minimum or an offset). A weight row's dot with it is then integer multiply-adds per block
//! and one float multiply per block.

/// Elements per activation block (one scale each).
pub const Q8_BLOCK: usize = 32;

/// A quantized activation vector of `n` elements (`n` a multiple of 32).
#[derive(Clone, Debug, Default)]
pub struct Q8Acts {
    pub qs: Vec<i8>,     // (n)
    pub d: Vec<f32>,     // (n / 32): x[i] ≈ d[i / 32] * qs[i]
    pub sum16: Vec<i16>, // (n / 16): Σ qs over each group of 16
}

/// A borrowed view of one quantized activation vector (or of a slice of it, block-aligned).
#[derive(Clone, Copy, Debug)]
pub struct Q8Ref<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sum16: &'a [i16],
}

impl Q8Acts {
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    pub fn as_ref(&self) -> Q8Ref<'_> {
        Q8Ref {
            qs: &self.qs,
            d: &self.d,
            sum16: &self.sum16,
        }
    }

    /// Row `t` of a batch quantized with [`quantize_q8_rows`], each row `n` elements long.
    pub fn row(&self, t: usize, n: usize) -> Q8Ref<'_> {
        Q8Ref {
            qs: &self.qs[t * n..(t + 1) * n],
            d: &self.d[t * n / Q8_BLOCK..(t + 1) * n / Q8_BLOCK],
            sum16: &self.sum16[t * n / 16..(t + 1) * n / 16],
        }
    }
}

/// Quantizes `x` (length a multiple of 32) into `out`, reusing its allocations: per block of 32,
/// `d = max|x| / 127`, `q = round(x · (1/d))` with ties to even (as ggml's AVX quantizer, and
/// unlike C's `roundf` in ggml's scalar one: a tie is a 1-in-2^23 event that moves one `q` by 1),
/// and `q = 0` for an all-zero block. Every variant computes bit-identical output, the fastest
/// this CPU supports is used. Non-finite inputs give unspecified (but memory-safe) blocks.
pub fn quantize_q8(x: &[f32], out: &mut Q8Acts) {
    out.qs.clear();
    out.d.clear();
    out.sum16.clear();
    append_q8(x, out);
}

/// Quantizes `n_rows` rows of `x` one after the other (each row a multiple of 32 long).
pub fn quantize_q8_rows(x: &[f32], out: &mut Q8Acts) {
    quantize_q8(x, out)
}

/// A quantizer: the body of [`quantize_q8`] (appends to `out`).
pub type QuantizeQ8 = fn(x: &[f32], out: &mut Q8Acts);

/// Every activation quantizer this CPU can run, named, `"portable"` first. They all produce the
/// same bytes; [`quantize_q8`] uses the last. For tests and benchmarks.
pub fn quantize_q8_variants() -> Vec<(&'static str, QuantizeQ8)> {
    #[allow(unused_mut)] // extended on x86-64 only
    let mut out: Vec<(&'static str, QuantizeQ8)> = vec![("portable", append_q8_portable)];
    #[cfg(target_arch = "x86_64")]
    out.extend(x86::variant());
    out
}

/// The fastest quantizer, chosen once.
fn append_q8(x: &[f32], out: &mut Q8Acts) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static BEST: OnceLock<QuantizeQ8> = OnceLock::new();
        let best = BEST
            .get_or_init(|| x86::variant().map_or(append_q8_portable as QuantizeQ8, |(_, f)| f));
        best(x, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    append_q8_portable(x, out)
}

/// The scalar quantizer: the definition the vector versions reproduce bit for bit (same
/// operations in the same order: one division for `d`, one for `1/d`, one product per element).
fn append_q8_portable(x: &[f32], out: &mut Q8Acts) {
    // `(v + M) − M` rounds `v` to an integer, ties to even, exactly as `round_ties_even` for
    // `|v| < 2^22` (here `|v| ≤ 127`): `v + M` lies in [2^23, 2^24), where the spacing of f32 is
    // 1. Unlike `round_ties_even`, it needs no SSE4.1 (a libm call on baseline x86-64, 10×
    // slower) and it vectorizes everywhere.
    const M: f32 = 12_582_912.0; // 1.5 · 2^23
    let nb = x.len() / Q8_BLOCK;
    let (q0, d0, s0) = (out.qs.len(), out.d.len(), out.sum16.len());
    out.qs.resize(q0 + nb * Q8_BLOCK, 0);
    out.d.resize(d0 + nb, 0.0);
    out.sum16.resize(s0 + 2 * nb, 0);
    let blocks = x
        .chunks_exact(Q8_BLOCK)
        .zip(out.qs[q0..].chunks_exact_mut(Q8_BLOCK));
    let scales = out.d[d0..]
        .iter_mut()
        .zip(out.sum16[s0..].chunks_exact_mut(2));
    for ((x, qs), (d_out, sums)) in blocks.zip(scales) {
        // Eight running maxima (max is exact, so any order gives the same `amax`).
        let mut m = [0f32; 8];
        for c in x.chunks_exact(8) {
            for (m, v) in m.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = m.iter().fold(0f32, |a, &b| a.max(b));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        *d_out = d;
        for (q, v) in qs.iter_mut().zip(x) {
            *q = ((v * id + M) - M) as i8;
        }
        for (s, half) in sums.iter_mut().zip(qs.chunks_exact(16)) {
            *s = half.iter().map(|&q| q as i16).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "q8_x86.rs"]
mod x86;

/// The integer-dot kernel of a weight format: `row` holds `qs.len()` elements in that format.
pub type DotQ8 = fn(row: &[u8], acts: Q8Ref<'_>) -> f32;

/// The integer dot of many rows at once: `out[i]` = the dot of `w[i·row_bytes..(i+1)·row_bytes]`
/// with `acts`, for every `i < out.len()` whose row `w` holds (the others are left as they are).
/// One call per run of rows saves a call per row, and a kernel may share the activation loads
/// between rows.
pub type DotQ8Rows = fn(w: &[u8], row_bytes: usize, acts: Q8Ref<'_>, out: &mut [f32]);

/// The integer dot of a subset of rows: `out[i]` = the dot of row `rows[i]` of `w` (rows of
/// `row_bytes`) with `acts`, for `i < min(out.len(), rows.len())`; a row `w` does not hold gives
/// 0. For sparse products, whose rows are scattered.
pub type DotQ8Gather = fn(w: &[u8], row_bytes: usize, rows: &[u32], acts: Q8Ref<'_>, out: &mut [f32]);
