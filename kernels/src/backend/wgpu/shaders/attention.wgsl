// Causal attention with grouped KV heads, as the CPU backend: query t (position start + t) of
// head h attends keys 0 ..= start + t of KV head h / (n_heads / n_kv_heads). One workgroup of 64
// per (token, head). Keys are taken 64 at a time (any number of keys, no cache in workgroup
// memory): each thread scores one key, then the tile's weights are folded into a running
// softmax (max m, sum l, rescaled by exp(m_old - m_new): the online softmax of Milakov &
// Gimelshein 2018, as FlashAttention) and into the output, each thread owning head dimensions
// i, i + 64, i + 128, i + 192 (head_dim ≤ 256).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    start: u32,
    n_tokens: u32,
    scale: f32,  // 1 / sqrt(head_dim)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> q: array<f32>;    // (n_tokens, n_heads * head_dim)
@group(0) @binding(2) var<storage, read_write> kc: array<f32>;   // (ctx, n_kv_heads * head_dim)
@group(0) @binding(3) var<storage, read_write> vc: array<f32>;   // (ctx, n_kv_heads * head_dim)
@group(0) @binding(4) var<storage, read_write> o: array<f32>;    // (n_tokens, n_heads * head_dim)

const TILE: u32 = 64u;

var<workgroup> qs: array<vec4<f32>, 64>;  // (head_dim), scaled
var<workgroup> ps: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = wg.y * nwg.x + wg.x;
    // Uniform across the workgroup: every thread leaves together or none does.
    if id >= p.n_tokens * p.n_heads {
        return;
    }
    let t = id / p.n_heads;
    let h = id % p.n_heads;
    let hd = p.head_dim;
    let q_off = t * p.n_heads * hd + h * hd;
    let kv_dim = p.n_kv_heads * hd;
    let kv_off = (h / (p.n_heads / p.n_kv_heads)) * hd;
    let n_keys = p.start + t + 1u;

    for (var d = li; d < 256u; d += TILE) {
        var v = 0.0;
        if d < hd {
            v = q[q_off + d] * p.scale;
        }
        qs[d >> 2u][d & 3u] = v;
    }
    workgroupBarrier();

    var m = -3.0e38;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var k0 = 0u; k0 < n_keys; k0 += TILE) {
        let key = k0 + li;
        var s = -3.0e38;
        if key < n_keys {
            s = 0.0;
            let kb = key * kv_dim + kv_off;
            if (hd & 3u) == 0u {
                for (var d4 = 0u; d4 < hd / 4u; d4++) {
                    let i = kb + 4u * d4;
                    s += dot(qs[d4], vec4<f32>(kc[i], kc[i + 1u], kc[i + 2u], kc[i + 3u]));
                }
            } else {
                for (var d = 0u; d < hd; d++) {
                    s += qs[d >> 2u][d & 3u] * kc[kb + d];
                }
            }
        }
        ps[li] = s;
        workgroupBarrier();
        let n = min(TILE, n_keys - k0);
        var tile_max = m;
        for (var j = 0u; j < n; j++) {
            tile_max = max(tile_max, ps[j]);
        }
        workgroupBarrier();
        ps[li] = exp(s - tile_max);
        workgroupBarrier();
        let alpha = exp(m - tile_max);
        m = tile_max;
        l *= alpha;
        for (var r = 0u; r < 4u; r++) {
            acc[r] *= alpha;
        }
        for (var j = 0u; j < n; j++) {
            let pj = ps[j];
            l += pj;
            let vb = (k0 + j) * kv_dim + kv_off;
            for (var r = 0u; r < 4u; r++) {
                let d = li + TILE * r;
                if d < hd {
                    acc[r] += pj * vc[vb + d];
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let d = li + TILE * r;
        if d < hd {
            o[q_off + d] = acc[r] / l;
        }
    }
}
