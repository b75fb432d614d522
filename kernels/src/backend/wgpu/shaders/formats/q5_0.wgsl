// block_q5_0 { d: f16, qh: [u8; 4], qs: [u8; 16] } (22 bytes): Q4_0's nibbles plus a fifth bit,
// bit j of the word qh for element j; value (q - 16) * d (ggml dequantize_row_q5_0).

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 5u) * 22u;
    let j = c & 31u;
    let lo = (byte_at(o + 6u + (j & 15u)) >> ((j >> 4u) << 2u)) & 0xfu;
    let hi = ((u32_at(o + 2u) >> j) & 1u) << 4u;
    return (f32(lo | hi) - 16.0) * f16_at(o);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + u * 22u;
    let qh = u32_at(o + 2u);
    var acc = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let q = u32_at(o + 6u + 4u * i);
        let q0 = nib4(q) + 16.0 * bits4(qh >> (4u * i));
        let q1 = nib4(q >> 4u) + 16.0 * bits4(qh >> (16u + 4u * i));
        acc += dot(q0 - 16.0, xv4(x4 + i)) + dot(q1 - 16.0, xv4(x4 + 4u + i));
    }
    return acc * f16_at(o);
}
