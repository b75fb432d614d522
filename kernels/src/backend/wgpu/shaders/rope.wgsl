// RoPE (Su et al. 2021), in place, as the CPU backend: one thread per rotated pair of one head;
// `interleaved` pairs (2i, 2i + 1) (llama.cpp's GGUF layout), else (i, i + head_dim / 2).

struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    interleaved: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;    // (n_tokens, n_heads, head_dim)
@group(0) @binding(2) var<storage, read_write> cs: array<f32>;   // cos (n_tokens, head_dim / 2)
@group(0) @binding(3) var<storage, read_write> sn: array<f32>;   // sin (n_tokens, head_dim / 2)

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.head_dim / 2u;
    let idx = (wg.y * nwg.x + wg.x) * 256u + li;
    if idx >= p.n_tokens * p.n_heads * half {
        return;
    }
    let head = idx / half;
    let i = idx % half;
    let t = head / p.n_heads;
    let base = head * p.head_dim;
    var a = base + i;
    var b = base + i + half;
    if p.interleaved != 0u {
        a = base + 2u * i;
        b = a + 1u;
    }
    let c = cs[t * half + i];
    let s = sn[t * half + i];
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
