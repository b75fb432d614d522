// Causal attention with grouped KV heads, as the CPU backend: query t (position start + t) of
// head h attends keys 0 ..= start + t of KV head h / (n_heads / n_kv_heads). One workgroup of
// 256 per (token, head), as four streams of 64 threads: in round r, stream s takes the tile of
// 64 keys from 256 r + 64 s (any number of keys, no cache in workgroup memory). Each thread
// scores one key, then the tile's weights are folded into the stream's running softmax (max m,
// sum l, rescaled by exp(m_old - m_new): the online softmax of Milakov & Gimelshein 2018, as
// FlashAttention) and output, each thread owning head dimensions i, i + 64, i + 128, i + 192
// (head_dim ≤ 256). At the end the four streams' (m, l, output) are merged the same way.

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
const STREAMS: u32 = 4u;

var<workgroup> qs: array<vec4<f32>, 64>;   // (head_dim), scaled
var<workgroup> ps: array<f32, 256>;        // (STREAMS, TILE): scores, then weights
var<workgroup> acc_s: array<f32, 1024>;    // (STREAMS, 256): each stream's output
var<workgroup> ml_s: array<vec2<f32>, 4>;  // (STREAMS): each stream's (m, l)

@compute @workgroup_size(256)
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
    let s = li / TILE;     // stream
    let lane = li % TILE;  // thread within the stream

    var qv = 0.0;
    if li < hd {
        qv = q[q_off + li] * p.scale;
    }
    qs[li >> 2u][li & 3u] = qv;
    workgroupBarrier();

    var m = -3.0e38;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var r0 = 0u; r0 < n_keys; r0 += STREAMS * TILE) {
        let k0 = r0 + s * TILE;
        let key = k0 + lane;
        var score = -3.0e38;
        if key < n_keys {
            score = 0.0;
            let kb = key * kv_dim + kv_off;
            if (hd & 3u) == 0u {
                for (var d4 = 0u; d4 < hd / 4u; d4++) {
                    let i = kb + 4u * d4;
                    score += dot(qs[d4], vec4<f32>(kc[i], kc[i + 1u], kc[i + 2u], kc[i + 3u]));
                }
            } else {
                for (var d = 0u; d < hd; d++) {
                    score += qs[d >> 2u][d & 3u] * kc[kb + d];
                }
            }
        }
        ps[li] = score;
        workgroupBarrier();
        // This stream's keys in this round: 0 when its tile starts past the last key.
        let n = min(TILE, max(n_keys, k0) - k0);
        var tile_max = m;
        for (var j = 0u; j < n; j++) {
            tile_max = max(tile_max, ps[s * TILE + j]);
        }
        workgroupBarrier();
        ps[li] = exp(score - tile_max);
        workgroupBarrier();
        let alpha = exp(m - tile_max);
        m = tile_max;
        l *= alpha;
        for (var r = 0u; r < 4u; r++) {
            acc[r] *= alpha;
        }
        for (var j = 0u; j < n; j++) {
            let pj = ps[s * TILE + j];
            l += pj;
            let vb = (k0 + j) * kv_dim + kv_off;
            for (var r = 0u; r < 4u; r++) {
                let d = lane + TILE * r;
                if d < hd {
                    acc[r] += pj * vc[vb + d];
                }
            }
        }
        workgroupBarrier();
    }

    // Merge the streams: out = Σ_s e^(m_s - M) acc_s / Σ_s e^(m_s - M) l_s, M = max_s m_s.
    for (var r = 0u; r < 4u; r++) {
        acc_s[s * 256u + lane + TILE * r] = acc[r];
    }
    if lane == 0u {
        ml_s[s] = vec2<f32>(m, l);
    }
    workgroupBarrier();
    if s == 0u {
        var big = ml_s[0].x;
        for (var j = 1u; j < STREAMS; j++) {
            big = max(big, ml_s[j].x);
        }
        var w = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
        var sum = 0.0;
        for (var j = 0u; j < STREAMS; j++) {
            // A stream that saw no key has m = -3e38 and l = 0: weight 0.
            w[j] = exp(ml_s[j].x - big);
            sum += w[j] * ml_s[j].y;
        }
        for (var r = 0u; r < 4u; r++) {
            let d = lane + TILE * r;
            if d < hd {
                var v = 0.0;
                for (var j = 0u; j < STREAMS; j++) {
                    v += w[j] * acc_s[j * 256u + d];
                }
                o[q_off + d] = v / sum;
            }
        }
    }
}
