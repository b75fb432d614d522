// Byte access to raw GGUF blocks (ggml-common.h layouts) held in `w`, an `array<u32>` the kernel
// declares: blocks are not 4-byte aligned (Q4_0 is 18 bytes), so fields are extracted at
// arbitrary byte offsets from the little-endian words. f16 fields are decoded with
// `unpack2x16float`, so no shader-f16 support is needed.

fn byte_at(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 3u) << 3u)) & 0xffu;
}

// The 16-bit field at an even byte offset `o`.
fn u16_at(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 2u) << 3u)) & 0xffffu;
}

fn f16_at(o: u32) -> f32 {
    return unpack2x16float(u16_at(o)).x;
}

// Four bytes from any offset `o`, as a little-endian word.
fn u32_at(o: u32) -> u32 {
    let i = o >> 2u;
    let s = (o & 3u) << 3u;
    if s == 0u {
        return w[i];
    }
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

// Byte `k` (0..4) of `q` as a signed value.
fn i8_of(q: u32, k: u32) -> f32 {
    return f32(bitcast<i32>(q << (24u - 8u * k)) >> 24u);
}

// The four bytes of `q`, each masked with `m`, as floats (byte 0 first).
fn bytes4(q: u32, m: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(m));
}

// The low nibbles of the four bytes of `q`.
fn nib4(q: u32) -> vec4<f32> {
    return bytes4(q, 0xfu);
}

// The four bytes of `q` as signed values.
fn ibytes4(q: u32) -> vec4<f32> {
    let v = vec4<i32>(bitcast<i32>(q << 24u), bitcast<i32>(q << 16u), bitcast<i32>(q << 8u), bitcast<i32>(q));
    return vec4<f32>(v >> vec4<u32>(24u));
}

// Bits 0, 1, 2, 3 of `h`.
fn bits4(h: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(h, h >> 1u, h >> 2u, h >> 3u) & vec4<u32>(1u));
}
