// block_q3_K { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 } (110 bytes), 256
// elements in eight chunks of 32: chunk c has low 2 bits from bits 2 (c % 4) of
// qs[32 (c / 4) ..], and 4 is subtracted where bit c of hmask[l] is clear; each 16 elements have
// a signed 6-bit scale (ggml dequantize_row_q3_K: the kmask1/kmask2 shuffle, written out below).
// A unit is one chunk.

// Scale j (0..16) minus 32: low 4 bits are nibble j / 8 of byte j % 8, high 2 bits are bits
// 2 (j / 4) of byte 8 + j % 4 of the 12 bytes at s.
fn q3_scale(s: u32, j: u32) -> f32 {
    let lo = (byte_at(s + (j & 7u)) >> (4u * (j >> 3u))) & 0xfu;
    let hi = (byte_at(s + 8u + (j & 3u)) >> (2u * (j >> 2u))) & 3u;
    return f32(lo | (hi << 4u)) - 32.0;
}

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 8u) * 110u;
    let ch = (c >> 5u) & 7u;
    let l = c & 31u;
    let lo = (byte_at(o + 32u + 32u * (ch >> 2u) + l) >> (2u * (ch & 3u))) & 3u;
    let hi = (byte_at(o + l) >> ch) & 1u;
    return f16_at(o + 108u) * q3_scale(o + 96u, 2u * ch + (l >> 4u)) * (f32(lo + 4u * hi) - 4.0);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + (u >> 3u) * 110u;
    let ch = u & 7u;
    let qo = o + 32u + 32u * (ch >> 2u);
    let sh = 2u * (ch & 3u);
    var acc = vec2<f32>(0.0, 0.0); // per half of 16
    for (var i = 0u; i < 8u; i++) {
        let q = bytes4(u32_at(qo + 4u * i) >> sh, 3u) + 4.0 * bytes4(u32_at(o + 4u * i) >> ch, 1u) - 4.0;
        let part = dot(q, xv4(x4 + i));
        if i < 4u {
            acc.x += part;
        } else {
            acc.y += part;
        }
    }
    return f16_at(o + 108u) * (q3_scale(o + 96u, 2u * ch) * acc.x + q3_scale(o + 96u, 2u * ch + 1u) * acc.y);
}
