// BF16: the upper half of a binary32 per element (rows start at even bytes); any row length.

fn dq(rb: u32, c: u32) -> f32 {
    return bitcast<f32>(u16_at(rb + 2u * c) << 16u);
}

fn unit_dot(rb: u32, u: u32, xo: u32, cols: u32) -> f32 {
    var acc = 0.0;
    let n = min(32u, cols - 32u * u);
    let base = rb + 64u * u;
    for (var j = 0u; j < n; j++) {
        acc += bitcast<f32>(u16_at(base + 2u * j) << 16u) * xv(xo + j);
    }
    return acc;
}
