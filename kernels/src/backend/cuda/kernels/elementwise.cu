// Elementwise ops over f32 buffers (this crate's backend `Elementwise`; activations as cpu/ops.rs):
// a += b, a += b broadcast over rows, a = act(a) * b for gated linear units. One thread per
// element.

// a: (n) f32, written; b: (n) f32.
extern "C" __global__ void add(float *a, const float *b, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] += b[i];
}

// a: (n) f32 as rows of `width`, written; b: (width) f32.
extern "C" __global__ void add_row(float *a, const float *b, u32 n, u32 width) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] += b[i % width];
}

static __device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// GELU, tanh approximation; 0.7978845608 = sqrt(2 / pi).
static __device__ __forceinline__ float gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

// a: (n) f32, a = act(a) * b; b: (n) f32.
extern "C" __global__ void glu_silu(float *a, const float *b, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = silu(a[i]) * b[i];
}

extern "C" __global__ void glu_relu(float *a, const float *b, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = fmaxf(a[i], 0.0f) * b[i];
}

extern "C" __global__ void glu_gelu(float *a, const float *b, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = gelu(a[i]) * b[i];
}
