// Causal attention with grouped KV heads over a KV cache (transformers' `eager_attention_forward`,
// this crate's cpu/attention.rs), with the keys taken in tiles and an online softmax (the running
// maximum and sum of FlashAttention): any number of keys, head_dim <= 256.
//
// One block of 128 threads per (query head, token). Per tile of 128 keys: each warp scores keys
// w, w + 4, … (lanes split the head dimension, so a key row is read contiguously), the block takes
// the tile's maximum, rescales what it has, and each thread adds the weighted values of its own
// dimensions (d and d + 128), reading value rows contiguously across the block.

#define ATT_THREADS 128
#define ATT_TILE 128
#define ATT_MAX_DIM 256

// q, out: (n_tokens, n_heads * head_dim) f32, token t at position start + t; k, v: (ctx,
// n_kv_heads * head_dim) f32, the first start + n_tokens rows used. Query head h reads KV head
// h / (n_heads / n_kv_heads). Grid: (n_heads, tokens of this launch), t = t0 + blockIdx.y.
extern "C" __global__ void attention(const float *q, const float *k, const float *v, float *out, u32 n_heads,
                                     u32 n_kv_heads, u32 head_dim, u32 start, float scale, u32 t0) {
    __shared__ float qs[ATT_MAX_DIM];
    __shared__ float p[ATT_TILE];
    __shared__ float scratch[WARP];
    const u32 h = blockIdx.x, t = t0 + blockIdx.y;
    const u32 tid = threadIdx.x, lane = tid % WARP, warp = tid / WARP, n_warps = ATT_THREADS / WARP;
    const u32 group = n_heads / n_kv_heads, kvh = h / group;
    const u64 q_dim = (u64)n_heads * head_dim, kv_dim = (u64)n_kv_heads * head_dim;
    const float *qh = q + t * q_dim + (u64)h * head_dim;
    const float *kh = k + (u64)kvh * head_dim;
    const float *vh = v + (u64)kvh * head_dim;
    for (u32 d = tid; d < head_dim; d += ATT_THREADS) qs[d] = qh[d];
    __syncthreads();

    const u32 n_keys = start + t + 1;
    float m = NEG_INF, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
    const u32 d0 = tid, d1 = tid + ATT_THREADS;
    for (u32 base = 0; base < n_keys; base += ATT_TILE) {
        const u32 nk = min((u32)ATT_TILE, n_keys - base);
        for (u32 j = warp; j < nk; j += n_warps) {
            const float *kr = kh + (u64)(base + j) * kv_dim;
            float s = 0.0f;
            for (u32 d = lane; d < head_dim; d += WARP) s += qs[d] * kr[d];
            s = warp_sum(s);
            if (lane == 0) p[j] = s * scale;
        }
        __syncthreads();
        const float s = tid < nk ? p[tid] : NEG_INF;
        const float m_new = fmaxf(m, block_max(s, scratch));
        const float e = tid < nk ? expf(s - m_new) : 0.0f;
        p[tid] = e;
        const float alpha = expf(m - m_new);
        l = l * alpha + block_sum(e, scratch);
        acc0 *= alpha;
        acc1 *= alpha;
        for (u32 j = 0; j < nk; j++) {
            const float *vr = vh + (u64)(base + j) * kv_dim;
            const float w = p[j];
            if (d0 < head_dim) acc0 += w * vr[d0];
            if (d1 < head_dim) acc1 += w * vr[d1];
        }
        m = m_new;
        __syncthreads();
    }
    float *o = out + t * q_dim + (u64)h * head_dim;
    if (d0 < head_dim) o[d0] = acc0 / l;
    if (d1 < head_dim) o[d1] = acc1 / l;
}
