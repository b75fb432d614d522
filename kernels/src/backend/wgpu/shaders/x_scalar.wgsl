// The input x of the matvec kernels for the float formats (rows of any length; buffers are
// padded to 4 bytes only, so x may end inside a vec4).

@group(0) @binding(2) var<storage, read_write> x: array<f32>;  // (cols)

fn xv(i: u32) -> f32 {
    return x[i];
}

fn xv4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[4u * i], x[4u * i + 1u], x[4u * i + 2u], x[4u * i + 3u]);
}
