// RMSNorm (Zhang & Sennrich 2019), as the CPU backend: out = x / sqrt(mean(x²) + eps) * weight.
// One workgroup of 256 per row: strided partial sums of squares, a tree reduction, then each
// thread scales the elements it read (so `out` may be `x`).

struct Params {
    dim: u32,
    n_rows: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;       // (n_rows, dim)
@group(0) @binding(2) var<storage, read_write> weight: array<f32>;  // (dim)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;       // (n_rows, dim)

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.y * nwg.x + wg.x;
    let base = row * p.dim;
    var acc = 0.0;
    if row < p.n_rows {
        for (var i = li; i < p.dim; i += 256u) {
            let v = x[base + i];
            acc += v * v;
        }
    }
    part[li] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if li < s {
            part[li] += part[li + s];
        }
        workgroupBarrier();
    }
    if row < p.n_rows {
        let scale = 1.0 / sqrt(part[0] / f32(max(p.dim, 1u)) + p.eps);
        for (var i = li; i < p.dim; i += 256u) {
            y[base + i] = x[base + i] * scale * weight[i];
        }
    }
}
