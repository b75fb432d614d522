// Quantized weight rows times 8-bit activation blocks with integer dot products (dp4a), for the
// legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the k-quants (Q4_K, Q5_K, Q6_K): llama.cpp's
// mmvq.cu / vecdotq.cuh (`vec_dot_q4_0_q8_1` …, `vec_dot_q4_K_q8_1` …); block layouts exactly
// as this crate's quant/legacy.rs and quant/kquants.rs.
//
// One warp per output and NT tokens (NT = 1 for decode, 8 for prefill: each weight piece is
// decoded once for 8 tokens). The row is cut in 32-element pieces, one per activation block;
// lane l takes pieces l, l + 32, …, so a warp reads a contiguous run of the row.
//
// A format's `load(row, i, q, A, B)` decodes piece i of a row into 8 ints of quants `q` (elements
// 4k..4k+3 in int k, as the activation block's 8 ints) and, per half g of 16 elements, the
// factors of its integer sums: the piece dotted with an activation block (quants a, scale dx) is
//     dx * sum_g (A[g] * (sum_{k in g} q[k].a[k] + OFF * s_g)  +  B[g] * s_g),
//     s_g = sum_{k in g} 1.a[k],
// with the format's integer offset OFF (-8, -16, -32, else 0) applied exactly, in integers, and B
// its minimum (m, -dmin * min; 0 for the offset formats).

// Low nibbles (elements 4k..) and high nibbles (elements 16 + 4k..) of a 16-byte `qs` field.
static __device__ __forceinline__ void nibbles(u32 v, int k, int *q) {
    q[k] = (int)(v & 0x0F0F0F0Fu);
    q[k + 4] = (int)((v >> 4) & 0x0F0F0F0Fu);
}

// Bits 0..3 of `h` moved to bit 4 of bytes 0..3 (the fifth bit of four Q5 quants).
static __device__ __forceinline__ int spread_high(u32 h) {
    return (int)(((h << 4) & 0x00000010u) | ((h << 11) & 0x00001000u) | ((h << 18) & 0x00100000u) |
                 ((h << 25) & 0x10000000u));
}

// Both halves get the same factors.
static __device__ __forceinline__ void same(float *A, float *B, float a, float b) {
    A[0] = A[1] = a;
    B[0] = B[1] = b;
}

// block_q4_0 { d: f16, qs: [u8; 16] } (18 bytes): (q - 8) * d.
struct Q4_0 {
    static const int OFF = -8;
    static __device__ __forceinline__ void load(const u8 *row, u32 i, int *q, float *A, float *B) {
        const u8 *b = row + (u64)i * 18;
#pragma unroll
        for (int k = 0; k < 4; k++) nibbles((u32)get_int_b2(b + 2, k), k, q);
        const float d = f16_at(b, 0);
        same(A, B, d, 0.0f);
    }
};

// block_q4_1 { d: f16, m: f16, qs: [u8; 16] } (20 bytes): q * d + m.
struct Q4_1 {
    static const int OFF = 0;
    static __device__ __forceinline__ void load(const u8 *row, u32 i, int *q, float *A, float *B) {
        const u8 *b = row + (u64)i * 20;
#pragma unroll
        for (int k = 0; k < 4; k++) nibbles((u32)get_int_b4(b + 4, k), k, q);
        same(A, B, f16_at(b, 0), f16_at(b, 2));
    }
};

// Q5 quants: 16-byte `qs` (low nibbles as Q4) and the 32-bit `qh` (bit j: fifth bit of element j).
static __device__ __forceinline__ void q5_quants(const u8 *qs, u32 qh, bool aligned4, int *q) {
#pragma unroll
    for (int k = 0; k < 4; k++) {
        nibbles((u32)(aligned4 ? get_int_b4(qs, k) : get_int_b2(qs, k)), k, q);
        q[k] |= spread_high(qh >> (4 * k));
        q[k + 4] |= spread_high(qh >> (4 * k + 16));
    }
}

// block_q5_0 { d: f16, qh: [u8; 4], qs: [u8; 16] } (22 bytes): (q - 16) * d.
struct Q5_0 {
    static const int OFF = -16;
    static __device__ __forceinline__ void load(const u8 *row, u32 i, int *q, float *A, float *B) {
        const u8 *b = row + (u64)i * 22;
        q5_quants(b + 6, (u32)get_int_b2(b + 2, 0), false, q);
        const float d = f16_at(b, 0);
        same(A, B, d, 0.0f);
    }
};

// block_q5_1 { d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] } (24 bytes): q * d + m.
struct Q5_1 {
    static const int OFF = 0;
    static __device__ __forceinline__ void load(const u8 *row, u32 i, int *q, float *A, float *B) {
        const u8 *b = row + (u64)i * 24;
        q5_quants(b + 8, (u32)get_int_b4(b + 4, 0), true, q);
        same(A, B, f16_at(b, 0), f16_at(b, 2));
    }
};

// block_q8_0 { d: f16, qs: [i8; 32] } (34 bytes): q * d.
struct Q8_0 {
    static const int OFF = 0;
    static __device__ __forceinline__ void load(const u8 *row, u32 i, int *q, float *A, float *B) {
        const u8 *b = row + (u64)i * 34;
#pragma unroll
        for (int k = 0; k < 8; k++) q[k] = get_int_b2(b + 2, k);
        same(A, B, f16_at(b, 0), 0.0f);
    }
};

// Q4_K/Q5_K's 6-bit scale and min of piece j (ggml's `get_scale_min_k4`): for j < 4 the low
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
    static const int OFF = 0;
    static __device__ __forceinline__ void load(const u8 *row, u32 i, int *q, float *A, float *B) {
        const u8 *b = row + (u64)(i / 8) * 144;
        const u32 c = i % 8;
        const u8 *qs = b + 16 + 32 * (c / 2);
        const u32 shift = 4 * (c % 2);
#pragma unroll
        for (int k = 0; k < 8; k++) q[k] = (int)(((u32)get_int_b4(qs, k) >> shift) & 0x0F0F0F0Fu);
        float sc, mn;
        scale_min_k4(b + 4, c, &sc, &mn);
        same(A, B, f16_at(b, 0) * sc, -(f16_at(b, 2) * mn));
    }
};

// block_q5_K { d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] } (176 bytes):
// Q4_K's nibbles (qs at 48) plus a fifth bit, bit c of qh[l], worth 16.
struct Q5_K {
    static const int OFF = 0;
    static __device__ __forceinline__ void load(const u8 *row, u32 i, int *q, float *A, float *B) {
        const u8 *b = row + (u64)(i / 8) * 176;
        const u32 c = i % 8;
        const u8 *qh = b + 16;
        const u8 *qs = b + 48 + 32 * (c / 2);
        const u32 shift = 4 * (c % 2);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const u32 lo = ((u32)get_int_b4(qs, k) >> shift) & 0x0F0F0F0Fu;
            const u32 hi = (((u32)get_int_b4(qh, k) >> c) & 0x01010101u) << 4;
            q[k] = (int)(lo | hi);
        }
        float sc, mn;
        scale_min_k4(b + 4, c, &sc, &mn);
        same(A, B, f16_at(b, 0) * sc, -(f16_at(b, 2) * mn));
    }
};

// block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 } (210 bytes, only 2-byte
// aligned). Piece c: half h = c / 4, quarter k = c % 4; low 4 bits are nibble k / 2 of
// ql[64 h + 32 (k % 2) ..][..32], high 2 bits are bits 2k.. of qh[32 h ..][..32]; the value is
// (q - 32) * d * scales[8 h + 2 k + l / 16].
struct Q6_K {
    static const int OFF = -32;
    static __device__ __forceinline__ void load(const u8 *row, u32 i, int *q, float *A, float *B) {
        const u8 *b = row + (u64)(i / 8) * 210;
        const u32 c = i % 8, h = c / 4, k = c % 4;
        const u8 *ql = b + 64 * h + 32 * (k % 2);
        const u8 *qh = b + 128 + 32 * h;
        const u32 lshift = 4 * (k / 2), hshift = 2 * k;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const u32 lo = ((u32)get_int_b2(ql, j) >> lshift) & 0x0F0F0F0Fu;
            const u32 hi = (((u32)get_int_b2(qh, j) >> hshift) & 0x03030303u) << 4;
            q[j] = (int)(lo | hi);
        }
        const float d = f16_at(b, 208);
#pragma unroll
        for (int g = 0; g < 2; g++) {
            A[g] = d * (float)(i8)b[192 + 8 * h + 2 * k + g];
            B[g] = 0.0f;
        }
    }
};

// Piece quants `q` (offset OFF, factors A, B) times activation block `a` (8 ints) of scale `dx`.
template <int OFF>
static __device__ __forceinline__ float dot_piece(const int *q, const float *A, const float *B, const int *a, float dx) {
    float s = 0.0f;
#pragma unroll
    for (int g = 0; g < 2; g++) {
        int si = 0, sx = 0;
#pragma unroll
        for (int k = 4 * g; k < 4 * g + 4; k++) {
            const int ak = __ldg(a + k);
            si = dp4a(q[k], ak, si);
            sx = dp4a(0x01010101, ak, sx);
        }
        s += A[g] * (float)(si + OFF * sx) + B[g] * (float)sx;
    }
    return dx * s;
}

// out[t * n_out + i] = W[row(i)] . x_t for i < n_out and tokens t = t0 + NT * blockIdx.y + j
// (j < NT, t < n_tokens); row(i) = rows[i], or i when `rows` is null; a row >= n_w_rows gives 0
// and sets bit 0 of `*err`. `blocks` = columns / 32.
// w: (n_w_rows, row_bytes); rows: (n_out) u32 or null; xq: (n_tokens, blocks * 32) i8;
// xd: (n_tokens, blocks) f32; out: (n_tokens, n_out) f32. blockDim.x = 128 (4 warps, 4 outputs).
template <typename F, int NT>
static __device__ __forceinline__ void mmvq(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows,
                                            const i8 *xq, const float *xd, u32 blocks, float *out, u32 t0,
                                            u32 n_tokens, u32 *err) {
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
        for (u32 b = lane; b < blocks; b += WARP) {
            int q[8];
            float A[2], B[2];
            F::load(wr, b, q, A, B);
#pragma unroll
            for (int j = 0; j < NT; j++) {
                if (j < nt) {
                    const u64 ab = (u64)(tb + j) * blocks + b; // activation block
                    sum[j] += dot_piece<F::OFF>(q, A, B, (const int *)(xq + ab * 32), xd[ab]);
                }
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

// mmvq_<format>: one token per warp (decode, subsets of rows); mmvq8_<format>: eight.
#define MMVQ(name, name8, F)                                                                           \
    extern "C" __global__ void name(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows, \
                                    const i8 *xq, const float *xd, u32 blocks, float *out, u32 t0,       \
                                    u32 n_tokens, u32 *err) {                                            \
        mmvq<F, 1>(w, row_bytes, rows, n_out, n_w_rows, xq, xd, blocks, out, t0, n_tokens, err);       \
    }                                                                                                  \
    extern "C" __global__ void name8(const u8 *w, u64 row_bytes, const u32 *rows, u32 n_out, u32 n_w_rows, \
                                     const i8 *xq, const float *xd, u32 blocks, float *out, u32 t0,      \
                                     u32 n_tokens, u32 *err) {                                           \
        mmvq<F, 8>(w, row_bytes, rows, n_out, n_w_rows, xq, xd, blocks, out, t0, n_tokens, err);       \
    }

MMVQ(mmvq_q4_0, mmvq8_q4_0, Q4_0)
MMVQ(mmvq_q4_1, mmvq8_q4_1, Q4_1)
MMVQ(mmvq_q5_0, mmvq8_q5_0, Q5_0)
MMVQ(mmvq_q5_1, mmvq8_q5_1, Q5_1)
MMVQ(mmvq_q8_0, mmvq8_q8_0, Q8_0)
MMVQ(mmvq_q4_k, mmvq8_q4_k, Q4_K)
MMVQ(mmvq_q5_k, mmvq8_q5_k, Q5_K)
MMVQ(mmvq_q6_k, mmvq8_q6_k, Q6_K)
