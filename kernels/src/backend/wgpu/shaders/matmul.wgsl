// out = x · Wᵀ for several tokens (prefill): a workgroup computes a tile of 128 rows × 64
// tokens, stepping through the columns 16 at a time: the W tile is dequantized once into
// workgroup memory (`dq` of the format) and shared by the 64 tokens, the x tile by the 128 rows;
// each of the 256 threads accumulates 4 rows × 8 tokens in registers, so each value it loads
// from workgroup memory serves 4 or 8 products. Dispatched once per piece of W.

struct Params {
    rows: u32,       // rows of this piece
    cols: u32,
    row_bytes: u32,
    row0: u32,       // the piece's first row in W
    n_tokens: u32,
    out_stride: u32, // rows of W
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;        // (rows, row_bytes)
@group(0) @binding(2) var<storage, read_write> x: array<f32>;  // (n_tokens, cols)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;  // (n_tokens, out_stride)

// Only `dq` of the format is used here; `unit_dot` (matvec) needs these to compile.
fn xv(i: u32) -> f32 {
    return x[i];
}

fn xv4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[4u * i], x[4u * i + 1u], x[4u * i + 2u], x[4u * i + 3u]);
}

const TR: u32 = 128u; // rows per tile
const TT: u32 = 64u;  // tokens per tile
const TK: u32 = 16u;  // columns per step
const RPT: u32 = 4u;  // rows per thread: tr, tr + 32, tr + 64, tr + 96
const TPT: u32 = 8u;  // tokens per thread: 8 tg .. 8 tg + 8

var<workgroup> ws: array<f32, 2176>;  // (TR, TK + 1): padded against bank conflicts
var<workgroup> xs: array<f32, 1024>;  // (TT, TK)

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let r0 = wg.x * TR;
    let t0 = wg.y * TT;
    let tr = li % 32u;
    let tg = li / 32u;
    var acc: array<f32, 32>; // (RPT, TPT), zeroed
    for (var k0 = 0u; k0 < p.cols; k0 += TK) {
        for (var i = 0u; i < 8u; i++) {
            let e = li + 256u * i;
            let r = e / TK;
            let k = e % TK;
            var v = 0.0;
            if r0 + r < p.rows && k0 + k < p.cols {
                v = dq((r0 + r) * p.row_bytes, k0 + k);
            }
            ws[r * (TK + 1u) + k] = v;
        }
        for (var i = 0u; i < 4u; i++) {
            let e = li + 256u * i;
            let t = e / TK;
            let k = e % TK;
            var v = 0.0;
            if t0 + t < p.n_tokens && k0 + k < p.cols {
                v = x[(t0 + t) * p.cols + k0 + k];
            }
            xs[e] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            var wv: array<f32, 4>;
            for (var i = 0u; i < RPT; i++) {
                wv[i] = ws[(tr + 32u * i) * (TK + 1u) + k];
            }
            for (var j = 0u; j < TPT; j++) {
                let xv_ = xs[(tg * TPT + j) * TK + k];
                for (var i = 0u; i < RPT; i++) {
                    acc[i * TPT + j] += wv[i] * xv_;
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < RPT; i++) {
        let r = r0 + tr + 32u * i;
        if r < p.rows {
            for (var j = 0u; j < TPT; j++) {
                let t = t0 + tg * TPT + j;
                if t < p.n_tokens {
                    y[t * p.out_stride + p.row0 + r] = acc[i * TPT + j];
                }
            }
        }
    }
}
