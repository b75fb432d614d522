// Activations to 8-bit blocks of 32 for the integer dots (ggml's `quantize_row_q8_1` /
// llama.cpp's `quantize_q8_1` kernel; this crate's `quant::q8::quantize_q8`): per block,
// d = max|x| / 127, q = round(x * (1 / d)) with ties to even, q = 0 for an all-zero block.
// One warp per block, one element per lane.

// x: (n_blocks * 32) f32; qs: (n_blocks * 32) i8; d: (n_blocks) f32.
extern "C" __global__ void quantize_q8(const float *x, i8 *qs, float *d, u32 n_blocks) {
    const u32 block = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const u32 lane = threadIdx.x % WARP;
    if (block >= n_blocks) return;
    const u64 i = (u64)block * WARP + lane;
    const float v = x[i];
    const float amax = warp_max(fabsf(v));
    const float dd = amax / 127.0f;
    const float id = dd > 0.0f ? 1.0f / dd : 0.0f;
    int q = __float2int_rn(v * id);
    q = max(-128, min(127, q));
    qs[i] = (i8)q;
    if (lane == 0) d[block] = dd;
}
