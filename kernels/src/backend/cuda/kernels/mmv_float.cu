// Float weight rows (F32, F16, BF16) times f32 activations (llama.cpp's mmv.cu, without its
// vector loads): one warp per output and NT tokens (1 for decode, 8 for prefill: each weight is
// read once for 8 tokens), lanes striding over the columns so each step reads 32 consecutive
// weights. Same arguments as mmvq.cu's kernels, with x in f32.

struct F32 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return ((const float *)row)[c]; }
};
struct F16 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return f16_to_f32(((const u16 *)row)[c]); }
};
struct BF16 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return bf16_to_f32(((const u16 *)row)[c]); }
};

// out[t * n_out + i] = W[row(i)] . x_t for i < n_out and tokens t = t0 + NT * blockIdx.y + j
// (j < NT, t < n_tokens); row(i) = rows[i], or i when `rows` is null; a row >= n_w_rows gives 0
// and sets bit 0 of `*err`.
// w: (n_w_rows, row_bytes); rows: (n_out) u32 or null; x: (n_tokens, cols) f32;
// out: (n_tokens, n_out) f32. blockDim.x = 128 (4 warps, 4 outputs).
template <typename F, int NT>
static __device__ __forceinline__ void mmv(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows,
                                           const float *x, u32 cols, float *out, u32 t0, u32 n_tokens, u32 *err) {
    const u32 i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const u32 lane = threadIdx.x % WARP;
    const u32 tb = t0 + NT * blockIdx.y;
    if (i >= n_out || tb >= n_tokens) return;
    const u32 nt = min((u32)NT, n_tokens - tb);
    const u32 row = rows ? rows[i] : i;
    float sum[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) sum[j] = 0.0f;
    if (row < n_w_rows) {
        const u8 *wr = w + (u64)row * row_bytes;
        for (u32 c = lane; c < cols; c += WARP) {
            const float wc = F::at(wr, c);
#pragma unroll
            for (int j = 0; j < NT; j++) {
                if (j < nt) sum[j] += wc * x[(u64)(tb + j) * cols + c];
            }
        }
    } else if (lane == 0) {
        atomicOr(err, 1u);
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const float s = warp_sum(sum[j]);
        if (lane == 0 && j < nt) out[(u64)(tb + j) * n_out + i] = s;
    }
}

// mmv_<format>: one token per warp (decode, subsets of rows); mmv8_<format>: eight.
#define MMV(name, name8, F)                                                                              \
    extern "C" __global__ void name(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows, \
                                    const float *x, u32 cols, float *out, u32 t0, u32 n_tokens,         \
                                    u32 *err) {                                                          \
        mmv<F, 1>(w, row_bytes, rows, n_out, n_w_rows, x, cols, out, t0, n_tokens, err);                  \
    }                                                                                                    \
    extern "C" __global__ void name8(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows, \
                                     const float *x, u32 cols, float *out, u32 t0, u32 n_tokens,        \
                                     u32 *err) {                                                         \
        mmv<F, 8>(w, row_bytes, rows, n_out, n_w_rows, x, cols, out, t0, n_tokens, err);                  \
    }

MMV(mmv_f32, mmv8_f32, F32)
MMV(mmv_f16, mmv8_f16, F16)
MMV(mmv_bf16, mmv8_bf16, BF16)
