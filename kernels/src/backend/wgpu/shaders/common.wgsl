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
