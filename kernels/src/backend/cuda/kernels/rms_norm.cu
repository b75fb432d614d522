// RMSNorm (Hugging Face transformers' `LlamaRMSNorm`; this crate's cpu/ops.rs `rms_norm`):
// out = x / sqrt(mean(x^2) + eps) * weight. One block per row; `x` and `out` may be the same
// buffer (each thread writes only the elements it read).

// x, out: (n_rows, dim) f32; weight: (dim) f32. Grid: n_rows blocks.
extern "C" __global__ void rms_norm(const float *x, const float *weight, float *out, u32 dim, float eps) {
    __shared__ float scratch[WARP];
    const float *xr = x + (u64)blockIdx.x * dim;
    float *outr = out + (u64)blockIdx.x * dim;
    float ss = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) outr[i] = xr[i] * scale * weight[i];
}
