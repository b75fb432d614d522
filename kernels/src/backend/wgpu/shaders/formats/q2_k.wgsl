// block_q2_K { scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 } (84 bytes), 256 elements in
// eight chunks of 32: chunk c takes bits 2 (c % 4) of qs[32 (c / 4) ..]; each 16 elements have a
// scale byte (scales[2c], scales[2c + 1]) whose low nibble times d scales and whose high nibble
// times dmin is subtracted (ggml dequantize_row_q2_K). A unit is one chunk.

fn dq(rb: u32, c: u32) -> f32 {
    let o = rb + (c >> 8u) * 84u;
    let ch = (c >> 5u) & 7u;
    let l = c & 31u;
    let q = (byte_at(o + 16u + 32u * (ch >> 2u) + l) >> (2u * (ch & 3u))) & 3u;
    let sc = byte_at(o + 2u * ch + (l >> 4u));
    return f16_at(o + 80u) * f32(sc & 0xfu) * f32(q) - f16_at(o + 82u) * f32(sc >> 4u);
}

fn unit_dot(rb: u32, u: u32, xb: u32, cols: u32) -> f32 {
    let x4 = (xb >> 2u) + 8u * u;
    let o = rb + (u >> 3u) * 84u;
    let ch = u & 7u;
    let qo = o + 16u + 32u * (ch >> 2u);
    let sh = 2u * (ch & 3u);
    var qx = vec2<f32>(0.0, 0.0); // per half of 16
    var sx = vec2<f32>(0.0, 0.0);
    for (var i = 0u; i < 8u; i++) {
        let xx = xv4(x4 + i);
        let a = dot(bytes4(u32_at(qo + 4u * i) >> sh, 3u), xx);
        let s = dot(xx, vec4<f32>(1.0));
        if i < 4u {
            qx.x += a;
            sx.x += s;
        } else {
            qx.y += a;
            sx.y += s;
        }
    }
    let s0 = byte_at(o + 2u * ch);
    let s1 = byte_at(o + 2u * ch + 1u);
    let d = f16_at(o + 80u);
    let dmin = f16_at(o + 82u);
    return d * (f32(s0 & 0xfu) * qx.x + f32(s1 & 0xfu) * qx.y) - dmin * (f32(s0 >> 4u) * sx.x + f32(s1 >> 4u) * sx.y);
}
