// block_q4_0 { d: f16, qs: [u8; 16] } (18 bytes): element j is (qs[j] & 0xF) - 8, element
// j + 16 is (qs[j] >> 4) - 8, both times d (ggml dequantize_row_q4_0). A unit is one block.

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 5u) * 18u;
    let j = c & 31u;
    let q = (byte_at(o + 2u + (j & 15u)) >> ((j >> 4u) << 2u)) & 0xfu;
    return (f32(q) - 8.0) * f16_at(o);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let xo = xb + 32u * u;
    let o = rb + u * 18u;
    var acc = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let q = u32_at(o + 2u + 4u * i);
        for (var k = 0u; k < 4u; k++) {
            let b = q >> (8u * k);
            acc += (f32(b & 0xfu) - 8.0) * xv(xo + 4u * i + k) + (f32((b >> 4u) & 0xfu) - 8.0) * xv(xo + 16u + 4u * i + k);
        }
    }
    return acc * f16_at(o);
}
