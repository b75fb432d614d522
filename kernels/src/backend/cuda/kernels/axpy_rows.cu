// A weighted sum of a subset of weight rows, out[c] = sum_k coef[k] * W[rows[k]][c]: one thread
// per output column looping over the row list, each element dequantized on its own with the
// arithmetic of this crate's quant/legacy.rs and quant/kquants.rs (ggml's `dequantize_row_*`).
// Neighbouring threads read neighbouring bytes of the same blocks.

// Element c of a row, per format.
struct F32 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return ((const float *)row)[c]; }
};
struct F16 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return f16_to_f32(((const u16 *)row)[c]); }
};
struct BF16 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) { return bf16_to_f32(((const u16 *)row)[c]); }
};

// Low (j < 16) or high nibble of byte j % 16 of a 16-byte `qs` field.
static __device__ __forceinline__ u32 nibble(const u8 *qs, u32 j) {
    const u32 v = qs[j % 16];
    return j < 16 ? (v & 0x0F) : (v >> 4);
}

// Bit j of the 4-byte little-endian `qh` field, as 16.
static __device__ __forceinline__ u32 high_bit(const u8 *qh, u32 j) {
    return ((qh[j / 8] >> (j % 8)) & 1) << 4;
}

// block_q4_0 { d: f16, qs: [u8; 16] }: (q - 8) * d.
struct Q4_0 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) {
        const u8 *b = row + (u64)(c / 32) * 18;
        return (float)((int)nibble(b + 2, c % 32) - 8) * f16_at(b, 0);
    }
};
// block_q4_1 { d: f16, m: f16, qs: [u8; 16] }: q * d + m.
struct Q4_1 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) {
        const u8 *b = row + (u64)(c / 32) * 20;
        return (float)nibble(b + 4, c % 32) * f16_at(b, 0) + f16_at(b, 2);
    }
};
// block_q5_0 { d: f16, qh: [u8; 4], qs: [u8; 16] }: (q - 16) * d.
struct Q5_0 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) {
        const u8 *b = row + (u64)(c / 32) * 22;
        const u32 j = c % 32;
        return (float)((int)(nibble(b + 6, j) | high_bit(b + 2, j)) - 16) * f16_at(b, 0);
    }
};
// block_q5_1 { d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] }: q * d + m.
struct Q5_1 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) {
        const u8 *b = row + (u64)(c / 32) * 24;
        const u32 j = c % 32;
        return (float)(nibble(b + 8, j) | high_bit(b + 4, j)) * f16_at(b, 0) + f16_at(b, 2);
    }
};
// block_q8_0 { d: f16, qs: [i8; 32] }: q * d.
struct Q8_0 {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) {
        const u8 *b = row + (u64)(c / 32) * 34;
        return (float)(i8)b[2 + c % 32] * f16_at(b, 0);
    }
};

// Q4_K/Q5_K's scale and min of piece j (ggml's `get_scale_min_k4`).
static __device__ __forceinline__ void scale_min_k4(const u8 *s, u32 j, u32 *sc, u32 *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// block_q4_K (144 bytes / 256): element l of piece p is nibble p % 2 of qs[32 (p / 2) + l],
// times d * scale_p, minus dmin * min_p.
struct Q4_K {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) {
        const u8 *b = row + (u64)(c / 256) * 144;
        const u32 p = (c % 256) / 32, l = c % 32;
        u32 sc, mn;
        scale_min_k4(b + 4, p, &sc, &mn);
        const u32 q = (b[16 + 32 * (p / 2) + l] >> (4 * (p % 2))) & 0x0F;
        return f16_at(b, 0) * (float)sc * (float)q - f16_at(b, 2) * (float)mn;
    }
};
// block_q5_K (176 bytes / 256): Q4_K's nibbles (qs at 48) plus bit p of qh[l] (qh at 16) as 16.
struct Q5_K {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) {
        const u8 *b = row + (u64)(c / 256) * 176;
        const u32 p = (c % 256) / 32, l = c % 32;
        u32 sc, mn;
        scale_min_k4(b + 4, p, &sc, &mn);
        const u32 lo = (b[48 + 32 * (p / 2) + l] >> (4 * (p % 2))) & 0x0F;
        const u32 hi = ((b[16 + l] >> p) & 1) << 4;
        return f16_at(b, 0) * (float)sc * (float)(lo | hi) - f16_at(b, 2) * (float)mn;
    }
};
// block_q6_K (210 bytes / 256): piece p, half h = p / 4, quarter k = p % 4; low nibble k / 2 of
// ql[64 h + 32 (k % 2) + l], high bits 2k.. of qh[128 + 32 h + l]; (q - 32) * d * scales[8h+2k+l/16].
struct Q6_K {
    static __device__ __forceinline__ float at(const u8 *row, u32 c) {
        const u8 *b = row + (u64)(c / 256) * 210;
        const u32 p = (c % 256) / 32, l = c % 32, h = p / 4, k = p % 4;
        const u32 lo = (b[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
        const u32 hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
        const float dl = f16_at(b, 208) * (float)(i8)b[192 + 8 * h + 2 * k + l / 16];
        return dl * (float)((int)(lo | (hi << 4)) - 32);
    }
};

// w: (n_w_rows, row_bytes); rows: (n_rows) u32; coef: (n_rows) f32; out: (cols) f32, overwritten.
// Rows >= n_w_rows are skipped and set bit 1 of `*err`.
template <typename F>
static __device__ __forceinline__ void axpy_rows(const u8 *w, u64 row_bytes, u32 n_w_rows, const u32 *rows,
                                                 const float *coef, u32 n_rows, float *out, u32 cols, u32 *err) {
    const u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (u32 k = 0; k < n_rows; k++) {
        const u32 r = rows[k];
        if (r < n_w_rows) {
            acc += coef[k] * F::at(w + (u64)r * row_bytes, c);
        } else if (c == 0) {
            atomicOr(err, 2u);
        }
    }
    out[c] = acc;
}

#define AXPY(name, F)                                                                                  \
    extern "C" __global__ void name(const u8 *w, u64 row_bytes, u32 n_w_rows, const u32 *rows,          \
                                    const float *coef, u32 n_rows, float *out, u32 cols, u32 *err) {   \
        axpy_rows<F>(w, row_bytes, n_w_rows, rows, coef, n_rows, out, cols, err);                      \
    }

AXPY(axpy_rows_f32, F32)
AXPY(axpy_rows_f16, F16)
AXPY(axpy_rows_bf16, BF16)
AXPY(axpy_rows_q4_0, Q4_0)
AXPY(axpy_rows_q4_1, Q4_1)
AXPY(axpy_rows_q5_0, Q5_0)
AXPY(axpy_rows_q5_1, Q5_1)
AXPY(axpy_rows_q8_0, Q8_0)
AXPY(axpy_rows_q4_k, Q4_K)
AXPY(axpy_rows_q5_k, Q5_K)
AXPY(axpy_rows_q6_k, Q6_K)
