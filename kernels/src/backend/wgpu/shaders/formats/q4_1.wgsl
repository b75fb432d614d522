// block_q4_1 { d: f16, m: f16, qs: [u8; 16] } (20 bytes): q * d + m with Q4_0's nibble order
// (ggml dequantize_row_q4_1). A unit is one block.

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 5u) * 20u;
    let j = c & 31u;
    let q = (byte_at(o + 4u + (j & 15u)) >> ((j >> 4u) << 2u)) & 0xfu;
    return f32(q) * f16_at(o) + f16_at(o + 2u);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let xo = xb + 32u * u;
    let o = rb + u * 20u;
    var qx = 0.0;
    var sx = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let q = u32_at(o + 4u + 4u * i);
        for (var k = 0u; k < 4u; k++) {
            let b = q >> (8u * k);
            let x0 = xv(xo + 4u * i + k);
            let x1 = xv(xo + 16u + 4u * i + k);
            qx += f32(b & 0xfu) * x0 + f32((b >> 4u) & 0xfu) * x1;
            sx += x0 + x1;
        }
    }
    return qx * f16_at(o) + sx * f16_at(o + 2u);
}
