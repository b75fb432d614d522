// Quantized weight rows times 8-bit activation blocks with integer dot products (dp4a), for the
// legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the k-quants (Q4_K, Q5_K, Q6_K): llama.cpp's
// mmvq.cu / vecdotq.cuh (`vec_dot_q4_0_q8_1` …, `vec_dot_q4_K_q8_1` …); block layouts exactly
// as this crate's quant/legacy.rs and quant/kquants.rs.
//
// One warp per (output, token). The row is cut in 32-element pieces, the activation blocks: each
// lane takes pieces lane, lane + 32, …, so a warp reads a contiguous run of the row. A format's
// `dot(row, b, a, dx)` is piece `b` of the row times activation block `a` (8 ints, elements
// 4k..4k+3 in int k) of scale `dx`; `sum_q8(a)` (the sum of its quants) carries the offsets and
// minimums.

// Sum of the 8 x 4 signed bytes of `a`.
static __device__ __forceinline__ int sum_q8(const int *a) {
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) s = dp4a(0x01010101, a[k], s);
    return s;
}

// Nibble products of a 16-byte `qs` field: byte j holds elements j (low) and j + 16 (high).
static __device__ __forceinline__ int dot_nibbles(const u8 *qs, const int *a, bool aligned4) {
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const u32 v = (u32)(aligned4 ? get_int_b4(qs, k) : get_int_b2(qs, k));
        s = dp4a((int)(v & 0x0F0F0F0Fu), a[k], s);
        s = dp4a((int)((v >> 4) & 0x0F0F0F0Fu), a[k + 4], s);
    }
    return s;
}

// Bits 0..3 of `h` moved to bit 4 of bytes 0..3 (the fifth bit of four Q5 quants).
static __device__ __forceinline__ int spread_high(u32 h) {
    return (int)(((h << 4) & 0x00000010u) | ((h << 11) & 0x00001000u) | ((h << 18) & 0x00100000u) |
                 ((h << 25) & 0x10000000u));
}

// Q5 quants: 16-byte `qs` (low nibbles as Q4) and the 32-bit `qh` (bit j: fifth bit of element j).
static __device__ __forceinline__ int dot_q5(const u8 *qs, u32 qh, const int *a, bool aligned4) {
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const u32 v = (u32)(aligned4 ? get_int_b4(qs, k) : get_int_b2(qs, k));
        const int lo = (int)(v & 0x0F0F0F0Fu) | spread_high(qh >> (4 * k));
        const int hi = (int)((v >> 4) & 0x0F0F0F0Fu) | spread_high(qh >> (4 * k + 16));
        s = dp4a(lo, a[k], s);
        s = dp4a(hi, a[k + 4], s);
    }
    return s;
}

// block_q4_0 { d: f16, qs: [u8; 16] } (18 bytes): (q - 8) * d.
struct Q4_0 {
    static __device__ __forceinline__ float dot(const u8 *row, u32 i, const int *a, float dx) {
        const u8 *b = row + (u64)i * 18;
        const float d = f16_at(b, 0);
        return d * dx * (float)(dot_nibbles(b + 2, a, false) - 8 * sum_q8(a));
    }
};

// block_q4_1 { d: f16, m: f16, qs: [u8; 16] } (20 bytes): q * d + m.
struct Q4_1 {
    static __device__ __forceinline__ float dot(const u8 *row, u32 i, const int *a, float dx) {
        const u8 *b = row + (u64)i * 20;
        const float d = f16_at(b, 0), m = f16_at(b, 2);
        return d * dx * (float)dot_nibbles(b + 4, a, true) + m * dx * (float)sum_q8(a);
    }
};

// block_q5_0 { d: f16, qh: [u8; 4], qs: [u8; 16] } (22 bytes): (q - 16) * d.
struct Q5_0 {
    static __device__ __forceinline__ float dot(const u8 *row, u32 i, const int *a, float dx) {
        const u8 *b = row + (u64)i * 22;
        const float d = f16_at(b, 0);
        const u32 qh = (u32)get_int_b2(b + 2, 0);
        return d * dx * (float)(dot_q5(b + 6, qh, a, false) - 16 * sum_q8(a));
    }
};

// block_q5_1 { d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] } (24 bytes): q * d + m.
struct Q5_1 {
    static __device__ __forceinline__ float dot(const u8 *row, u32 i, const int *a, float dx) {
        const u8 *b = row + (u64)i * 24;
        const float d = f16_at(b, 0), m = f16_at(b, 2);
        const u32 qh = (u32)get_int_b4(b + 4, 0);
        return d * dx * (float)dot_q5(b + 8, qh, a, true) + m * dx * (float)sum_q8(a);
    }
};

// block_q8_0 { d: f16, qs: [i8; 32] } (34 bytes): q * d.
struct Q8_0 {
    static __device__ __forceinline__ float dot(const u8 *row, u32 i, const int *a, float dx) {
        const u8 *b = row + (u64)i * 34;
        const float d = f16_at(b, 0);
        int s = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) s = dp4a(get_int_b2(b + 2, k), a[k], s);
        return d * dx * (float)s;
    }
};

// Q4_K/Q5_K's 6-bit scale and min of piece `j` (ggml's `get_scale_min_k4`): for j < 4 the low
// 6 bits of bytes j and j + 4; for j >= 4 the nibbles of byte j + 4 and the top 2 bits of bytes
// j - 4 and j.
static __device__ __forceinline__ void scale_min_k4(const u8 *s, u32 j, float *sc, float *mn) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *mn = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
        *mn = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// block_q4_K { d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] } (144 bytes, 256 elements).
// Piece c (0..8) is the low (c even) or high (c odd) nibbles of qs[32 (c / 2) ..][..32]; its value
// is d * scale_c * q - dmin * min_c.
struct Q4_K {
    static __device__ __forceinline__ float dot(const u8 *row, u32 i, const int *a, float dx) {
        const u8 *b = row + (u64)(i / 8) * 144;
        const u32 c = i % 8;
        const float d = f16_at(b, 0), dmin = f16_at(b, 2);
        float sc, mn;
        scale_min_k4(b + 4, c, &sc, &mn);
        const u8 *q = b + 16 + 32 * (c / 2);
        const u32 shift = 4 * (c % 2);
        int s = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) s = dp4a((int)(((u32)get_int_b4(q, k) >> shift) & 0x0F0F0F0Fu), a[k], s);
        return dx * (d * sc * (float)s - dmin * mn * (float)sum_q8(a));
    }
};

// block_q5_K { d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] } (176 bytes):
// Q4_K's nibbles (qs at 48) plus a fifth bit, bit c of qh[l], worth 16.
struct Q5_K {
    static __device__ __forceinline__ float dot(const u8 *row, u32 i, const int *a, float dx) {
        const u8 *b = row + (u64)(i / 8) * 176;
        const u32 c = i % 8;
        const float d = f16_at(b, 0), dmin = f16_at(b, 2);
        float sc, mn;
        scale_min_k4(b + 4, c, &sc, &mn);
        const u8 *qh = b + 16;
        const u8 *q = b + 48 + 32 * (c / 2);
        const u32 shift = 4 * (c % 2);
        int s = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const u32 lo = ((u32)get_int_b4(q, k) >> shift) & 0x0F0F0F0Fu;
            const u32 hi = (((u32)get_int_b4(qh, k) >> c) & 0x01010101u) << 4;
            s = dp4a((int)(lo | hi), a[k], s);
        }
        return dx * (d * sc * (float)s - dmin * mn * (float)sum_q8(a));
    }
};

// block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 } (210 bytes, only 2-byte
// aligned). Piece c: half h = c / 4, quarter k = c % 4; low 4 bits are nibble k / 2 of
// ql[64 h + 32 (k % 2) ..][..32], high 2 bits are bits 2k.. of qh[32 h ..][..32]; the value is
// (q - 32) * d * scales[8 h + 2 k + l / 16].
struct Q6_K {
    static __device__ __forceinline__ float dot(const u8 *row, u32 i, const int *a, float dx) {
        const u8 *b = row + (u64)(i / 8) * 210;
        const u32 c = i % 8, h = c / 4, k = c % 4;
        const float d = f16_at(b, 208);
        const u8 *ql = b + 64 * h + 32 * (k % 2);
        const u8 *qh = b + 128 + 32 * h;
        const u32 lshift = 4 * (k / 2), hshift = 2 * k;
        float sum = 0.0f;
#pragma unroll
        for (int g = 0; g < 2; g++) {
            int s = 0, sx = 0;
#pragma unroll
            for (int j = 4 * g; j < 4 * g + 4; j++) {
                const u32 lo = ((u32)get_int_b2(ql, j) >> lshift) & 0x0F0F0F0Fu;
                const u32 hi = (((u32)get_int_b2(qh, j) >> hshift) & 0x03030303u) << 4;
                s = dp4a((int)(lo | hi), a[j], s);
                sx = dp4a(0x01010101, a[j], sx);
            }
            const float sc = (float)(i8)b[192 + 8 * h + 2 * k + g];
            sum += sc * (float)(s - 32 * sx);
        }
        return d * dx * sum;
    }
};

// out[t * n_out + i] = W[row(i)] . x_t for i < n_out, t = t0 + blockIdx.y; row(i) = rows[i], or i
// when `rows` is null; a row >= n_w_rows gives 0. `blocks` = columns / 32.
// w: (n_w_rows, row_bytes); rows: (n_out) u32 or null; xq: (n_tokens, blocks * 32) i8;
// xd: (n_tokens, blocks) f32; out: (n_tokens, n_out) f32. blockDim.x = 128 (4 warps, 4 outputs).
template <typename F>
static __device__ __forceinline__ void mmvq(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows,
                                            const i8 *xq, const float *xd, u32 blocks, float *out, u32 t0) {
    const u32 i = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const u32 lane = threadIdx.x % WARP;
    const u32 t = t0 + blockIdx.y;
    if (i >= n_out) return;
    const u32 row = rows ? rows[i] : i;
    float sum = 0.0f;
    if (row < n_w_rows) {
        const u8 *wr = w + (u64)row * row_bytes;
        const int *xa = (const int *)(xq + (u64)t * blocks * 32);
        const float *xs = xd + (u64)t * blocks;
        for (u32 b = lane; b < blocks; b += WARP) sum += F::dot(wr, b, xa + 8 * b, xs[b]);
    }
    sum = warp_sum(sum);
    if (lane == 0) out[(u64)t * n_out + i] = sum;
}

#define MMVQ(name, F)                                                                                  \
    extern "C" __global__ void name(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows, \
                                    const i8 *xq, const float *xd, u32 blocks, float *out, u32 t0) {     \
        mmvq<F>(w, row_bytes, rows, n_out, n_w_rows, xq, xd, blocks, out, t0);                         \
    }

MMVQ(mmvq_q4_0, Q4_0)
MMVQ(mmvq_q4_1, Q4_1)
MMVQ(mmvq_q5_0, Q5_0)
MMVQ(mmvq_q5_1, Q5_1)
MMVQ(mmvq_q8_0, Q8_0)
MMVQ(mmvq_q4_k, Q4_K)
MMVQ(mmvq_q5_k, Q5_K)
MMVQ(mmvq_q6_k, Q6_K)
