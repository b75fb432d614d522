// The elementwise ops of the CPU backend over the first n elements of `a`: op 0 a += b; op 1
// a[i] += b[i % width] (a bias over rows); op 2 a = act(a) * b with act 0 SiLU, 1 ReLU, 2 GELU
// (tanh approximation).

struct Params {
    n: u32,
    op: u32,
    act: u32,
    width: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;  // (n)
@group(0) @binding(2) var<storage, read_write> b: array<f32>;  // (n) or (width)

fn act(x: f32) -> f32 {
    if p.act == 0u {
        return x / (1.0 + exp(-x));
    }
    if p.act == 1u {
        return max(x, 0.0);
    }
    // tanh of large arguments can be NaN where it is computed through exp; it is ±1 there.
    let z = clamp(0.7978845608 * (x + 0.044715 * x * x * x), -15.0, 15.0);
    return 0.5 * x * (1.0 + tanh(z));
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wg.y * nwg.x + wg.x) * 256u + li;
    if i >= p.n {
        return;
    }
    if p.op == 0u {
        a[i] += b[i];
    } else if p.op == 1u {
        a[i] += b[i % p.width];
    } else {
        a[i] = act(a[i]) * b[i];
    }
}
