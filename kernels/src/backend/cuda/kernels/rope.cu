// Rotary position embedding in place (transformers' `apply_rotary_pos_emb`; this crate's
// cpu/ops.rs `rope`), one thread per rotated pair. `interleaved`: pairs (2i, 2i + 1) (llama.cpp's
// GGUF layout), else (i, i + head_dim / 2) (Hugging Face's).

// x: (n_tokens, n_heads, head_dim) f32, rotated in place; cos, sin: (n_tokens, head_dim / 2) f32.
extern "C" __global__ void rope(float *x, const float *cos_t, const float *sin_t, u32 n_tokens, u32 n_heads,
                                u32 head_dim, u32 interleaved) {
    const u32 half = head_dim / 2;
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_tokens * n_heads * half) return;
    const u32 i = (u32)(idx % half);
    const u64 head = idx / half;
    const u64 t = head / n_heads;
    float *h = x + head * head_dim;
    const u32 a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float c = cos_t[t * half + i], s = sin_t[t * half + i];
    const float x0 = h[a], x1 = h[b];
    h[a] = x0 * c - x1 * s;
    h[b] = x0 * s + x1 * c;
}
