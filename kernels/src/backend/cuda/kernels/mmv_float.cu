// Float weight rows (F32, F16, BF16) times f32 activations (llama.cpp's mmv.cu, without its
// vector loads): one warp per (output, token), lanes striding over the columns so each step
// reads 32 consecutive weights. Same arguments as mmvq.cu's kernels, with x in f32.

struct F32 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return ((const float *)row)[c]; }
};
struct F16 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return f16_to_f32(((const u16 *)row)[c]); }
};
struct BF16 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return bf16_to_f32(((const u16 *)row)[c]); }
};

// out[t * n_out + i] = W[row(i)] . x_t, t = t0 + blockIdx.y; row(i) = rows[i], or i when `rows`
// is null; a row >= n_w_rows gives 0.
// w: (n_w_rows, row_bytes); rows: (n_out) u32 or null; x: (n_tokens, cols) f32;
// out: (n_tokens, n_out) f32. blockDim.x = 128 (4 warps, 4 outputs).
template <typename F>
static __device__ __forceinline__ void mmv(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows,
                                           const float *x, u32 cols, float *out, u32 t0) {
    const u32 i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const u32 lane = threadIdx.x % WARP;
    const u32 t = t0 + blockIdx.y;
    if (i >= n_out) return;
    const u32 row = rows ? rows[i] : i;
    float sum = 0.0f;
    if (row < n_w_rows) {
        const u8 *wr = w + (u64)row * row_bytes;
        const float *xt = x + (u64)t * cols;
        for (u32 c = lane; c < cols; c += WARP) sum += F::at(wr, c) * xt[c];
    }
    sum = warp_sum(sum);
    if (lane == 0) out[(u64)t * n_out + i] = sum;
}

#define MMV(name, F)                                                                                     \
    extern "C" __global__ void name(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows, \
                                    const float *x, u32 cols, float *out, u32 t0) {                      \
        mmv<F>(w, row_bytes, rows, n_out, n_w_rows, x, cols, out, t0);                                   \
    }

MMV(mmv_f32, F32)
MMV(mmv_f16, F16)
MMV(mmv_bf16, BF16)
