// F32: one little-endian binary32 per element; a row may have any length.

fn dq(rb: u32, c: u32) -> f32 {
    return bitcast<f32>(w[(rb >> 2u) + c]);
}

// The dot of elements 32u .. 32u + 32 (those below `cols`) with `xv(xo ..)`.
fn unit_dot(rb: u32, u: u32, xo: u32, cols: u32) -> f32 {
    var acc = 0.0;
    let n = min(32u, cols - 32u * u);
    let base = (rb >> 2u) + 32u * u;
    for (var j = 0u; j < n; j++) {
        acc += bitcast<f32>(w[base + j]) * xv(xo + j);
    }
    return acc;
}
