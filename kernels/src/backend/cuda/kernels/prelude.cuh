// Ember CUDA prelude: prepended (as text) to every kernel source before NVRTC compiles it, so no
// source #includes anything and NVRTC needs no include path. Helpers follow llama.cpp's
// ggml-cuda/common.cuh and vecdotq.cuh (get_int_b2/b4, dp4a, warp reductions).

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define WARP 32
#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

// IEEE binary16 bits -> f32, with the hardware conversion (exact; sm_53+ not needed: cvt.f32.f16
// exists on every target NVRTC supports).
static __device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

// bfloat16 bits -> f32: the upper half of an f32.
static __device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __uint_as_float(((u32)h) << 16);
}

// Weight loads go through the read-only data cache (`__ldg`, ld.global.nc): on Pascal, plain
// global loads are cached in L2 only, and the block formats' narrow, strided loads would each
// cost an L2 transaction. Only for memory no kernel writes while it runs.

// The little-endian f16 at byte `off` of `p` (`p + off` 2-byte aligned).
static __device__ __forceinline__ float f16_at(const u8 *p, u32 off) {
    return f16_to_f32(__ldg((const u16 *)(p + off)));
}

// The 4 bytes at int index `i` of `p`, where `p` is only 2-byte aligned (two 16-bit loads).
static __device__ __forceinline__ int get_int_b2(const void *p, int i) {
    const u16 *h = (const u16 *)p;
    return (int)((u32)__ldg(h + 2 * i) | ((u32)__ldg(h + 2 * i + 1) << 16));
}

// The 4 bytes at int index `i` of `p`, where `p` is 4-byte aligned.
static __device__ __forceinline__ int get_int_b4(const void *p, int i) {
    return __ldg((const int *)p + i);
}

// Sum of the four signed byte products of `a` and `b`, plus `c` (sm_61+).
static __device__ __forceinline__ int dp4a(int a, int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronizes the block.
static __device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Maximum over the block, as `block_sum`.
static __device__ __forceinline__ float block_max(float v, float *scratch) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}
