// a[dst + i] = a[src + i] for i < n within one buffer (copies between buffers are
// copy_buffer_to_buffer). Overlapping ranges run in one thread, in the direction a memmove takes.

struct Params {
    src: u32,
    dst: u32,
    n: u32,
    serial: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (wg.y * nwg.x + wg.x) * 256u + li;
    if p.serial != 0u {
        if i != 0u {
            return;
        }
        if p.dst < p.src {
            for (var j = 0u; j < p.n; j++) {
                a[p.dst + j] = a[p.src + j];
            }
        } else {
            for (var j = p.n; j > 0u; j--) {
                a[p.dst + j - 1u] = a[p.src + j - 1u];
            }
        }
        return;
    }
    if i < p.n {
        a[p.dst + i] = a[p.src + i];
    }
}
