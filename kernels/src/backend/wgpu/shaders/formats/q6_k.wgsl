// block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 } (210 bytes). Chunk c (of
// eight, 32 elements) in half h = c / 4, quarter k = c % 4: low 4 bits are nibble k / 2 of
// ql[64h + 32 (k % 2) ..], high 2 bits are bits 2k of qh[32h ..]; value (q - 32) * d * scale
// 8h + 2k + l / 16 (ggml dequantize_row_q6_K). A unit is one chunk.

fn q6_scale(o: u32, i: u32) -> f32 {
    return i8_of(byte_at(o + 192u + i), 0u);
}

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 8u) * 210u;
    let ch = (c >> 5u) & 7u;
    let l = c & 31u;
    let h = ch >> 2u;
    let k = ch & 3u;
    let lo = (byte_at(o + 64u * h + 32u * (k & 1u) + l) >> (4u * (k >> 1u))) & 0xfu;
    let hi = (byte_at(o + 128u + 32u * h + l) >> (2u * k)) & 3u;
    return f16_at(o + 208u) * q6_scale(o, 8u * h + 2u * k + (l >> 4u)) * (f32(lo | (hi << 4u)) - 32.0);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + (u >> 3u) * 210u;
    let ch = u & 7u;
    let h = ch >> 2u;
    let k = ch & 3u;
    let lo_o = o + 64u * h + 32u * (k & 1u);
    let hi_o = o + 128u + 32u * h;
    let lo_sh = 4u * (k >> 1u);
    let hi_sh = 2u * k;
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = 0u; i < 8u; i++) {
        let q = nib4(u32_at(lo_o + 4u * i) >> lo_sh) + 16.0 * bytes4(u32_at(hi_o + 4u * i) >> hi_sh, 3u);
        let part = dot(q - 32.0, xv4(x4 + i));
        if i < 4u {
            acc.x += part;
        } else {
            acc.y += part;
        }
    }
    let s = 8u * h + 2u * k;
    return f16_at(o + 208u) * (q6_scale(o, s) * acc.x + q6_scale(o, s + 1u) * acc.y);
}
