//! GGUF reader and writer: a round trip through every metadata value type and several tensor
//! formats; then bad input, byte by byte: every malformed file must be an `Err` whose message
//! names the file and the problem — never a panic, never a huge allocation (a global allocator
//! below refuses any single allocation over 256 MiB, which aborts the test binary loudly);
//! then the real SmolLM2 file, against numbers read independently with gguf-py.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ember_engine::gguf::{GgufFile, GgufWriter, MetaValue};
use ember_engine::EngineError;
use ember_kernels::DType;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// No huge allocations: the reader checks every count against the bytes left in the file, so
// nothing in these tests needs more than a few MiB at once.

const MAX_ALLOCATION: usize = 256 << 20;

struct CappedAllocator;

unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut(); // → "memory allocation of N bytes failed", abort
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Deterministic pseudo-random bytes.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn u32s(values: &[u32]) -> MetaValue {
    MetaValue::array(&MetaValue::U32(0), values.iter().map(|v| MetaValue::U32(*v)).collect())
}

/// A small file with every metadata value type (nested arrays included) and tensors of
/// several formats, some of sizes that are not multiples of the alignment.
fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()))
        .meta("t.u8", MetaValue::U8(200))
        .meta("t.i8", MetaValue::I8(-100))
        .meta("t.u16", MetaValue::U16(60_000))
        .meta("t.i16", MetaValue::I16(-30_000))
        .meta("t.u32", MetaValue::U32(4_000_000_000))
        .meta("t.i32", MetaValue::I32(-2_000_000_000))
        .meta("t.f32", MetaValue::F32(-1.5e-7))
        .meta("t.bool.true", MetaValue::Bool(true))
        .meta("t.bool.false", MetaValue::Bool(false))
        .meta("t.string", MetaValue::String("héllo, wörld ✓".into()))
        .meta("t.string.empty", MetaValue::String(String::new()))
        .meta("t.u64", MetaValue::U64(u64::MAX))
        .meta("t.i64", MetaValue::I64(i64::MIN))
        .meta("t.f64", MetaValue::F64(std::f64::consts::PI))
        .meta("t.array.u32", u32s(&[1, 2, 3]))
        .meta("t.array.empty", u32s(&[]))
        .meta("t.array.strings", MetaValue::strings(&["a", "", "ccc"]))
        .meta("t.array.f64", MetaValue::array(&MetaValue::F64(0.0), vec![MetaValue::F64(0.25), MetaValue::F64(-1e300)]))
        .meta("t.array.bool", MetaValue::array(&MetaValue::Bool(false), vec![MetaValue::Bool(true), MetaValue::Bool(false)]))
        .meta(
            "t.array.nested",
            MetaValue::array(
                &u32s(&[]),
                vec![
                    MetaValue::array(&MetaValue::I16(0), vec![MetaValue::I16(-1), MetaValue::I16(2)]),
                    MetaValue::array(&MetaValue::I16(0), vec![]),
                    MetaValue::array(&MetaValue::I16(0), vec![MetaValue::I16(7)]),
                ],
            ),
        )
        .meta(
            "t.array.nested3",
            MetaValue::array(&u32s(&[]), vec![MetaValue::array(&u32s(&[]), vec![MetaValue::strings(&["deep"])])]),
        );
    w.tensor("f32", &[4, 3], DType::F32, bytes(4 * 3 * 4, 1))
        .tensor("f16", &[6], DType::F16, bytes(6 * 2, 2))
        .tensor("q8_0", &[64, 2, 1], DType::Q8_0, bytes(2 * 2 * 34, 3))
        .tensor("q4_k", &[256, 2], DType::Q4_K, bytes(2 * 144, 4))
        .tensor("q4_1.4d", &[32, 1, 2, 3], DType::Q4_1, bytes(6 * 20, 5))
        .tensor("bf16", &[3], DType::BF16, bytes(3 * 2, 6));
    w
}

/// The (name, dims, dtype, data) the sample writer holds, for comparison.
fn sample_tensors() -> Vec<(&'static str, Vec<usize>, DType, Vec<u8>)> {
    vec![
        ("f32", vec![4, 3], DType::F32, bytes(48, 1)),
        ("f16", vec![6], DType::F16, bytes(12, 2)),
        ("q8_0", vec![64, 2, 1], DType::Q8_0, bytes(136, 3)),
        ("q4_k", vec![256, 2], DType::Q4_K, bytes(288, 4)),
        ("q4_1.4d", vec![32, 1, 2, 3], DType::Q4_1, bytes(120, 5)),
        ("bf16", vec![3], DType::BF16, bytes(6, 6)),
    ]
}

fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Opens `content` as a file; it must fail with a message naming the file and containing every
/// one of `needles`. Returns the error for further checks.
#[track_caller]
fn expect_err(content: &[u8], needles: &[&str]) -> EngineError {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "bad-input.gguf", content);
    let err = match GgufFile::open(&path) {
        Ok(_) => panic!("a bad file opened without error; expected a message containing {needles:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "the message must name the file: {msg}");
    for needle in needles {
        assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    }
    err
}

/// A GGUF file built byte by byte, so that any field can hold any value.
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&n_tensors.to_le_bytes());
        v.extend_from_slice(&n_kv.to_le_bytes());
        Raw(v)
    }
    fn u32(mut self, x: u32) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u64(mut self, x: u64) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A metadata entry: key, type id, then the value's bytes as given.
    fn kv(self, key: &str, ty: u32, value: &[u8]) -> Self {
        self.str(key).u32(ty).raw(value)
    }
    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        self = self.str(name).u32(dims.len() as u32);
        for d in dims {
            self = self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    fn align(mut self, a: usize) -> Self {
        self.0.resize(self.0.len().div_ceil(a) * a, 0);
        self
    }
    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// A file with one tensor `t` of the given dims, type id and offset, followed by `data_len`
/// bytes of data after the aligned header.
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    Raw::header(3, 1, 0).tensor("t", dims, ty, offset).align(32).zeros(data_len).0
}

// ---------------------------------------------------------------------------------------------
// Round trip.

#[test]
fn round_trip_preserves_metadata_tensors_and_alignment() {
    let w = sample_writer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.gguf");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();

    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    let expected: BTreeMap<String, MetaValue> = w.metadata.iter().cloned().collect();
    assert_eq!(f.metadata, expected);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.get("t.i64").unwrap().as_i64(), Some(i64::MIN));
    assert_eq!(f.get_str_array("t.array.strings").unwrap(), vec!["a", "", "ccc"]);
    let nested = f.get("t.array.nested").unwrap().as_array().unwrap();
    assert_eq!(nested[0].as_array().unwrap(), &[MetaValue::I16(-1), MetaValue::I16(2)]);

    let file_len = std::fs::metadata(&path).unwrap().len() as usize;
    let expected = sample_tensors();
    assert_eq!(f.tensors.len(), expected.len());
    let mut prev_end = 0;
    for (t, (name, dims, dtype, data)) in f.tensors.iter().zip(&expected) {
        assert_eq!(t.name, *name);
        assert_eq!(&t.dims, dims, "{name}");
        assert_eq!(t.dtype, *dtype, "{name}");
        assert_eq!(t.n_bytes, data.len(), "{name}");
        assert_eq!(t.offset % 32, 0, "{name}: offset {} is not aligned", t.offset);
        assert!(t.offset >= prev_end, "{name} overlaps the previous tensor");
        assert!(t.offset + t.n_bytes <= file_len);
        assert_eq!(f.tensor_data(t), &data[..], "{name}");
        assert_eq!(t.n_elements(), dims.iter().product::<usize>());
        prev_end = t.offset + t.n_bytes;
    }
    assert_eq!(f.tensor("q4_k").unwrap().shape(), vec![2, 256]);
    assert!(f.tensor("nope").is_none());
    // The writer's bytes are what it wrote to disk.
    assert_eq!(std::fs::read(&path).unwrap(), w.to_bytes());
}

#[test]
fn versions_2_and_3_are_read_and_others_rejected() {
    let mut v = sample_writer().to_bytes();
    let dir = tempfile::tempdir().unwrap();
    for version in [2u32, 3] {
        v[4..8].copy_from_slice(&version.to_le_bytes());
        let path = write_file(dir.path(), &format!("v{version}.gguf"), &v);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, version);
        assert_eq!(f.tensors.len(), 6);
        assert_eq!(f.metadata.len(), sample_writer().metadata.len());
    }
    let mut patched = |version: [u8; 4]| {
        v[4..8].copy_from_slice(&version);
        v.clone()
    };
    expect_err(&patched(1u32.to_le_bytes()), &["version 1"]);
    expect_err(&patched(99u32.to_le_bytes()), &["version 99"]);
    expect_err(&patched(0u32.to_le_bytes()), &["version 0"]);
    expect_err(&patched(u32::MAX.to_le_bytes()), &["version 4294967295"]);
    expect_err(&patched(3u32.to_be_bytes()), &["big-endian"]);
    expect_err(&patched(2u32.to_be_bytes()), &["big-endian"]);
}

#[test]
fn custom_power_of_two_alignment_is_honoured() {
    // general.alignment = 64 (u32), one F32 tensor at relative offset 64.
    let content = Raw::header(3, 2, 1)
        .kv("general.alignment", 4, &64u32.to_le_bytes())
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[2], 0, 64)
        .align(64)
        .raw(&[1u8; 16])
        .zeros(48)
        .raw(&[2u8; 8])
        .0;
    let dir = tempfile::tempdir().unwrap();
    let f = GgufFile::open(write_file(dir.path(), "a64.gguf", &content)).unwrap();
    assert_eq!(f.alignment, 64);
    assert_eq!(f.tensors[0].offset % 64, 0);
    assert_eq!(f.tensors[1].offset, f.tensors[0].offset + 64);
    assert_eq!(f.tensor_data(&f.tensors[0]), &[1u8; 16]);
    assert_eq!(f.tensor_data(&f.tensors[1]), &[2u8; 8]);
}

// ---------------------------------------------------------------------------------------------
// Bad input: the file as a whole.

#[test]
fn empty_and_tiny_files() {
    expect_err(b"", &["truncated", "0 bytes"]);
    expect_err(b"GGUF", &["truncated"]);
    expect_err(&Raw::header(3, 0, 0).0[..23], &["truncated"]);
    // A minimal valid file: no tensors, no metadata.
    let dir = tempfile::tempdir().unwrap();
    let f = GgufFile::open(write_file(dir.path(), "min.gguf", &Raw::header(3, 0, 0).0)).unwrap();
    assert!(f.tensors.is_empty() && f.metadata.is_empty());
}

#[test]
fn missing_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.gguf");
    let msg = GgufFile::open(&path).err().unwrap().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn wrong_magic() {
    let mut v = sample_writer().to_bytes();
    v[..4].copy_from_slice(b"GGML");
    expect_err(&v, &["magic", "GGML", "GGUF"]);
    v[..4].copy_from_slice(b"\x89PNG");
    expect_err(&v, &["not a GGUF file"]);
}

/// Every prefix of a valid file that cuts into its header or tensor data is an error; a prefix
/// that only drops the padding after the last tensor is still a complete file.
#[test]
fn every_truncation_is_a_clear_error() {
    let full = sample_writer().to_bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "whole.gguf", &full);
    let data_end = {
        let f = GgufFile::open(&path).unwrap();
        f.tensors.iter().map(|t| t.offset + t.n_bytes).max().unwrap()
    };
    let path_text = path.display().to_string();
    for cut in 0..full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        match GgufFile::open(&path) {
            Ok(_) => assert!(cut >= data_end, "prefix of {cut} bytes (data ends at {data_end}) opened without error"),
            Err(e) => {
                let msg = e.to_string();
                assert!(cut < data_end, "prefix of {cut} bytes holds all data yet failed: {msg}");
                assert!(msg.contains(&path_text), "{msg}");
                assert!(
                    ["truncated", "impossible", "exceeds"].iter().any(|w| msg.contains(w)),
                    "prefix of {cut} bytes: the message should say the file is cut short: {msg}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input: counts and lengths.

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    for n in [u64::MAX, 1 << 40, 1 << 20] {
        expect_err(&Raw::header(3, n, 0).zeros(64).0, &["tensor_count", &n.to_string(), "impossible"]);
        expect_err(&Raw::header(3, 0, n).zeros(64).0, &["metadata_kv_count", &n.to_string(), "impossible"]);
    }
}

#[test]
fn absurd_string_lengths_are_rejected() {
    for n in [u64::MAX, 1 << 40, 1000] {
        // The key of a metadata entry.
        let v = Raw::header(3, 0, 1).u64(n).raw(b"abc").zeros(16).0;
        expect_err(&v, &["key of metadata entry 0", "string length", &n.to_string()]);
        // A string value.
        let v = Raw::header(3, 0, 1).str("general.name").u32(8).u64(n).raw(b"abc").0;
        expect_err(&v, &["general.name", "string length", &n.to_string()]);
        // A tensor name.
        let v = Raw::header(3, 1, 0).u64(n).raw(b"abc").zeros(40).0;
        expect_err(&v, &["name of tensor 0", "string length"]);
    }
}

#[test]
fn absurd_array_lengths_are_rejected() {
    for n in [u64::MAX, 1 << 40, 1 << 20] {
        for elem_type in [0u32, 4, 8, 9, 12] {
            let v = Raw::header(3, 0, 1).str("tokenizer.ggml.tokens").u32(9).u32(elem_type).u64(n).zeros(64).0;
            expect_err(&v, &["length of array `tokenizer.ggml.tokens`", &n.to_string(), "impossible"]);
        }
        // The length of an inner array.
        let v = Raw::header(3, 0, 1).str("nested").u32(9).u32(9).u64(1).u32(4).u64(n).zeros(64).0;
        expect_err(&v, &["nested", "impossible"]);
    }
}

#[test]
fn bad_metadata_values() {
    for ty in [13u32, 99, u32::MAX] {
        expect_err(&Raw::header(3, 0, 1).kv("k.bad", ty, &[0; 16]).0, &["k.bad", "unknown value type", &ty.to_string()]);
        let v = Raw::header(3, 0, 1).kv("k.arr", 9, &[]).u32(ty).u64(1).zeros(16).0;
        expect_err(&v, &["k.arr", "unknown array element type", &ty.to_string()]);
    }
    expect_err(&Raw::header(3, 0, 1).kv("k.bool", 7, &[2]).0, &["k.bool", "bool"]);
    let v = Raw::header(3, 0, 1).u64(2).raw(&[0xff, 0xfe]).u32(4).u32(0).0;
    expect_err(&v, &["UTF-8"]);
    let v = Raw::header(3, 0, 1).str("k.s").u32(8).u64(2).raw(&[0xc3, 0x28]).0;
    expect_err(&v, &["k.s", "UTF-8"]);
    // Arrays nested five deep (the reader allows four).
    let mut v = Raw::header(3, 0, 1).str("k.deep").u32(9);
    for _ in 0..5 {
        v = v.u32(9).u64(1);
    }
    expect_err(&v.u32(4).u64(0).0, &["k.deep", "nested"]);
    // A value cut short by the end of the file.
    expect_err(&Raw::header(3, 0, 1).kv("k.u64", 10, &[1, 2, 3]).0, &["k.u64", "truncated"]);
}

#[test]
fn bad_alignment() {
    for (ty, value) in [(4u32, 48u64), (4, 0), (4, 3), (10, 1 << 63 | 1)] {
        let bytes = if ty == 4 { (value as u32).to_le_bytes().to_vec() } else { value.to_le_bytes().to_vec() };
        let v = Raw::header(3, 0, 1).kv("general.alignment", ty, &bytes).0;
        expect_err(&v, &["general.alignment", "power of two"]);
    }
    let v = Raw::header(3, 0, 1).kv("general.alignment", 8, &Raw(Vec::new()).str("32").0).0;
    expect_err(&v, &["general.alignment", "power of two"]);
}

// ---------------------------------------------------------------------------------------------
// Bad input: tensor entries.

#[test]
fn unknown_tensor_formats_name_the_tensor_and_format() {
    for (id, name) in [(99u32, "unknown"), (16, "IQ2_XXS"), (9, "Q8_1"), (20, "IQ4_NL"), (39, "MXFP4")] {
        let v = Raw::header(3, 1, 0).tensor("blk.0.ffn_up.weight", &[256, 4], id, 0).align(32).zeros(4096).0;
        let err = expect_err(&v, &["blk.0.ffn_up.weight", name, &format!("ggml type {id}")]);
        assert!(matches!(err, EngineError::UnknownTensorFormat { .. }), "{err:?}");
    }
}

#[test]
fn bad_dimensions() {
    for n_dims in [0u32, 5, 9, u32::MAX] {
        let v = Raw::header(3, 1, 0).str("t.dims").u32(n_dims).zeros(128).0;
        expect_err(&v, &["t.dims", "n_dims", &n_dims.to_string()]);
    }
    expect_err(&one_tensor(&[0], 0, 0, 64), &["`t`", "dimension 0 = 0"]);
    expect_err(&one_tensor(&[4, 1 << 41], 0, 0, 64), &["`t`", "dimension 1"]);
    expect_err(&one_tensor(&[u64::MAX], 0, 0, 64), &["`t`", "dimension 0"]);
    // Each dimension allowed, their product not.
    expect_err(&one_tensor(&[1 << 40, 1 << 40, 1 << 40], 0, 0, 64), &["`t`", "overflow"]);
    // A row that is not a whole number of blocks.
    expect_err(&one_tensor(&[33, 2], DType::Q8_0 as u32, 0, 4096), &["`t`", "33"]);
    expect_err(&one_tensor(&[128], DType::Q4_K as u32, 0, 4096), &["`t`", "128"]);
}

#[test]
fn tensor_data_past_the_end_of_the_file() {
    // 16 F32 = 64 bytes needed, 63 present.
    expect_err(&one_tensor(&[16], 0, 0, 63), &["truncated", "`t`", "64"]);
    assert!(GgufFile::open(write_tmp(&one_tensor(&[16], 0, 0, 64)).path()).is_ok());
    // The offset alone is past the end; or so large that offset + size overflows.
    expect_err(&one_tensor(&[16], 0, 1 << 20, 64), &["truncated", "`t`"]);
    expect_err(&one_tensor(&[16], 0, u64::MAX - 31, 64), &["`t`"]);
    expect_err(&one_tensor(&[1 << 40, 1 << 20], 0, 0, 64), &["`t`"]);
}

#[test]
fn misaligned_tensor_offset() {
    for offset in [1u64, 4, 16, 33] {
        expect_err(&one_tensor(&[4], 0, offset, 128), &["`t`", &format!("offset {offset}"), "not aligned"]);
    }
}

/// A named temporary file with `content`.
fn write_tmp(content: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, content).unwrap();
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random corruption anywhere in a valid file: open may succeed or fail, but never panics,
    /// and a failure names the file. A success still has every tensor inside the file.
    #[test]
    fn random_corruption_never_panics(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut v = sample_writer().to_bytes();
        for (at, byte) in &edits {
            let i = at.index(v.len());
            v[i] = *byte;
        }
        let tmp = write_tmp(&v);
        match GgufFile::open(tmp.path()) {
            Ok(f) => {
                for t in &f.tensors {
                    prop_assert!(t.offset + t.n_bytes <= v.len());
                    prop_assert_eq!(f.tensor_data(t).len(), t.n_bytes);
                }
            }
            Err(e) => prop_assert!(e.to_string().contains(&tmp.path().display().to_string()), "{}", e),
        }
    }

    /// Random bytes after a valid magic and version.
    #[test]
    fn random_headers_never_panic(tail in prop::collection::vec(any::<u8>(), 0..512), version in 2u32..=3) {
        let mut v = Raw::header(version, 0, 0).0;
        v.truncate(8);
        v.extend_from_slice(&tail);
        let tmp = write_tmp(&v);
        if let Err(e) = GgufFile::open(tmp.path()) {
            prop_assert!(e.to_string().contains(&tmp.path().display().to_string()), "{}", e);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real SmolLM2 file. Expected numbers were read with gguf-py 0.19.0 (`gguf.GGUFReader`),
// independently of this reader.

const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_SIZE: u64 = 98_362_432;

fn smollm2_path() -> PathBuf {
    let path = match std::env::var_os("EMBER_TEST_MODEL").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => ember_engine::hub::ember_home().join("models").join(SMOLLM2_FILE),
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.len() == SMOLLM2_SIZE => path,
        Ok(m) => panic!(
            "{}: {} bytes, but this test expects {SMOLLM2_FILE} ({SMOLLM2_SIZE} bytes); point EMBER_TEST_MODEL at it",
            path.display(),
            m.len()
        ),
        Err(e) => panic!(
            "the SmolLM2 test model is missing ({}: {e}); fetch it with `cargo run --release -p ember-cli -- pull` \
             (or `make test`), or set EMBER_TEST_MODEL to {SMOLLM2_FILE}",
            path.display()
        ),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn real_smollm2_file_matches_gguf_py() {
    let f = GgufFile::open(smollm2_path()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u64("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(f.get_u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.get_u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.get_u64("llama.context_length").unwrap(), 8192);
    assert_eq!(f.get_str("general.name").unwrap(), "Smollm2 135M 8k Lc100K Mix1 Ep2");
    assert_eq!(f.metadata.len(), 33);
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(&tokens[..3], &["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);

    assert_eq!(f.tensors.len(), 272);
    let count = |d: DType| f.tensors.iter().filter(|t| t.dtype == d).count();
    assert_eq!((count(DType::Q4_1), count(DType::F32), count(DType::Q8_0)), (210, 61, 1));
    for t in &f.tensors {
        assert!(matches!(t.dtype, DType::Q4_1 | DType::Q8_0 | DType::F32), "{} is {}", t.name, t.dtype);
        assert_eq!(t.offset % 32, 0, "{}", t.name);
    }
    assert_eq!(f.tensors.iter().map(|t| t.n_bytes).sum::<usize>(), 96_576_768);

    let t = f.tensor("token_embd.weight").unwrap();
    assert_eq!((t.dims.clone(), t.dtype, t.offset, t.n_bytes), (vec![576, 49152], DType::Q8_0, 1_785_664, 30_081_024));
    assert_eq!(f.tensors[0].name, "token_embd.weight");
    let t = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((t.dims.clone(), t.dtype, t.offset, t.n_bytes), (vec![576, 576], DType::Q4_1, 33_806_656, 207_360));
    assert_eq!(sha256_hex(f.tensor_data(t)), "a8a1da23623a60216a214d68aca681284f4188cafcfe40664d8d025d3838038f");
    // The last tensor ends exactly at the end of the file.
    let t = f.tensors.last().unwrap();
    assert_eq!((t.name.as_str(), t.offset, t.n_bytes), ("output_norm.weight", 98_360_128, 2304));
    assert_eq!(t.offset as u64 + t.n_bytes as u64, SMOLLM2_SIZE);
    assert_eq!(sha256_hex(f.tensor_data(t)), "3b87f8e27335e67fc08f159cabfd2d18f205d6c5b225a6f978153552bf01d559");
}
