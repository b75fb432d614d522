//! GGUF reader and writer, following ggml's `docs/gguf.md` (versions 2 and 3, little-endian).
//!
//! The file is memory-mapped; tensor data is never copied: [`GgufFile::tensor_data`] returns a
//! slice of the map. Every count and length in the header is checked against the bytes that are
//! actually left in the file before anything is allocated, so a corrupt header is a clear error,
//! never a huge allocation or a panic.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_kernels::DType;
use memmap2::Mmap;

use crate::error::{EngineError, Result};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: usize = 4;
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value. Arrays keep their element type so that a file can be written back as read.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetaArray {
    pub elem_type: u32,
    pub values: Vec<MetaValue>,
}

impl MetaValue {
    fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, whatever integer type the file used.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(&a.values),
            _ => None,
        }
    }

    /// A short human-readable rendering (arrays are summarised), for `ember info`.
    pub fn summary(&self) -> String {
        match self {
            MetaValue::String(s) if s.len() > 60 => format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(60)], s.len()),
            MetaValue::String(s) => format!("{s:?}"),
            MetaValue::Array(a) => format!("[{} × {}]", a.values.len(), type_name(a.elem_type)),
            MetaValue::F32(v) => format!("{v}"),
            MetaValue::F64(v) => format!("{v}"),
            MetaValue::Bool(v) => format!("{v}"),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

fn type_name(id: u32) -> &'static str {
    ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"]
        .get(id as usize)
        .copied()
        .unwrap_or("?")
}

/// One tensor's header entry.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension, so a PyTorch (out, in)
    /// matrix has `dims = [in, out]`.
    pub dims: Vec<usize>,
    pub dtype: DType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    /// The shape in PyTorch order (outermost first): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An open, memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    pub mmap: Arc<Mmap>,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| EngineError::io(&path, e))?;
        let len = file.metadata().map_err(|e| EngineError::io(&path, e))?.len();
        if len < 24 {
            return Err(EngineError::format(&path, format!("truncated: {len} bytes is too short for a GGUF header")));
        }
        // SAFETY: the map is read-only; a model file changed under a running engine is outside
        // what any memory-mapping inference engine can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(&path, e))?;
        let header = Header::parse(&path, &mmap)?;
        Ok(GgufFile {
            path,
            version: header.version,
            alignment: header.alignment,
            metadata: header.metadata,
            tensors: header.tensors,
            mmap: Arc::new(mmap),
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.require(key)?.as_str().ok_or_else(|| self.wrong_type(key, "a string"))
    }

    /// A required unsigned integer value (any integer type).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?.as_u64().ok_or_else(|| self.wrong_type(key, "a non-negative integer"))
    }

    /// A required float value (integers accepted).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.require(key)?.as_f64().ok_or_else(|| self.wrong_type(key, "a number"))
    }

    /// An optional value of a given kind: `Ok(None)` when absent, an error when of the wrong type.
    pub fn opt<T>(&self, key: &str, conv: impl Fn(&MetaValue) -> Option<T>, kind: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| self.wrong_type(key, kind)),
        }
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self.require(key)?.as_array().ok_or_else(|| self.wrong_type(key, "an array"))?;
        arr.iter().map(|v| v.as_str().ok_or_else(|| self.wrong_type(key, "an array of strings"))).collect()
    }

    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key).ok_or_else(|| EngineError::MissingMetadata { path: self.path.clone(), key: key.to_string() })
    }

    fn wrong_type(&self, key: &str, kind: &str) -> EngineError {
        EngineError::Config { path: self.path.clone(), field: key.to_string(), problem: format!("expected {kind}") }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor, straight from the map (offsets were checked at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.n_bytes]
    }
}

/// The parsed header of a GGUF file.
struct Header {
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
}

impl Header {
    fn parse(path: &Path, bytes: &[u8]) -> Result<Header> {
        let mut r = Reader { path, bytes, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            return Err(r.err(format!("not a GGUF file: magic is {:?}, expected \"GGUF\"", String::from_utf8_lossy(magic))));
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err(r.err("GGUF version 1 is not supported (re-convert the model with a recent llama.cpp)")),
            v if (1..=3).contains(&v.swap_bytes()) => return Err(r.err("big-endian GGUF files are not supported")),
            v => return Err(r.err(format!("unsupported GGUF version {v} (supported: 2, 3)"))),
        }
        let n_tensors = r.count("tensor_count", 8 + 4 + 4 + 8)?;
        let n_kv = r.count("metadata_kv_count", 8 + 4 + 1)?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("key of metadata entry {i}"))?;
            let ty = r.u32(&format!("type of metadata `{key}`"))?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(r.err(format!("general.alignment = {v:?}: must be a power of two"))),
            },
        };

        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            infos.push(r.tensor_info(i)?);
        }
        let data_start = align_up(r.pos as u64, alignment);

        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, type_id, rel_offset) in infos {
            let dtype = DType::from_ggml_id(type_id).ok_or_else(|| EngineError::UnknownTensorFormat {
                path: path.to_path_buf(),
                tensor: name.clone(),
                format: format!("{} (ggml type {type_id})", DType::ggml_name(type_id)),
            })?;
            if rel_offset % alignment != 0 {
                return Err(r.err(format!("tensor `{name}`: offset {rel_offset} is not aligned to {alignment}")));
            }
            let n_bytes = tensor_bytes(dtype, &dims).map_err(|what| r.err(format!("tensor `{name}`: {what}")))?;
            let start = data_start.checked_add(rel_offset).filter(|s| *s <= bytes.len() as u64);
            let end = start.and_then(|s| s.checked_add(n_bytes as u64)).filter(|e| *e <= bytes.len() as u64);
            let (Some(start), Some(_)) = (start, end) else {
                return Err(r.err(format!(
                    "truncated: tensor `{name}` needs bytes {}..{} but the file has {}",
                    data_start.saturating_add(rel_offset),
                    data_start.saturating_add(rel_offset).saturating_add(n_bytes as u64),
                    bytes.len()
                )));
            };
            tensors.push(TensorInfo { name, dims, dtype, offset: start as usize, n_bytes });
        }
        Ok(Header { version, alignment, metadata, tensors })
    }
}

fn tensor_bytes(dtype: DType, dims: &[usize]) -> std::result::Result<usize, String> {
    let row = dtype.row_bytes(dims[0]).map_err(|e| e.to_string())?;
    dims[1..]
        .iter()
        .try_fold(row, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// A bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl Into<String>) -> EngineError {
        EngineError::format(self.path, what)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: reading {what} at offset {} needs {n} bytes, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    /// A count of items that each take at least `min_item_bytes`: rejected when the rest of the
    /// file could not possibly hold them.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let max = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > max {
            return Err(self.err(format!("{what} = {n} is impossible: the {} bytes left hold at most {max}", self.remaining())));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(&format!("length of {what}"))?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{what}: string length {len} at offset {} exceeds the {} bytes left",
                self.pos - 8,
                self.remaining()
            )));
        }
        let s = self.take(len as usize, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err(format!("{what}: string is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.arr::<1>(key)?[0]),
            1 => MetaValue::I8(self.arr::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => match self.arr::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("metadata `{key}`: bool byte {b} is neither 0 nor 1"))),
            },
            8 => MetaValue::String(self.string(&format!("metadata `{key}`"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem_type = self.u32(&format!("element type of `{key}`"))?;
                let min = match elem_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(format!("metadata `{key}`: unknown array element type {t}"))),
                };
                let n = self.count(&format!("length of array `{key}`"), min)?;
                // Grown as elements are read: a length that only the end of the file disproves
                // must not reserve memory up front.
                let mut values = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    values.push(self.value(elem_type, key, depth + 1)?);
                }
                MetaValue::Array(MetaArray { elem_type, values })
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr(key)?)),
            t => return Err(self.err(format!("metadata `{key}`: unknown value type {t}"))),
        })
    }

    fn tensor_info(&mut self, i: usize) -> Result<(String, Vec<usize>, u32, u64)> {
        let name = self.string(&format!("name of tensor {i}"))?;
        let n_dims = self.u32(&format!("n_dims of tensor `{name}`"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.err(format!("tensor `{name}`: n_dims = {n_dims}, must be 1..={MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            let v = self.u64(&format!("dimension {d} of tensor `{name}`"))?;
            if v == 0 || v > (1 << 40) {
                return Err(self.err(format!("tensor `{name}`: dimension {d} = {v} is impossible")));
            }
            dims.push(v as usize);
        }
        let type_id = self.u32(&format!("type of tensor `{name}`"))?;
        let offset = self.u64(&format!("offset of tensor `{name}`"))?;
        Ok((name, dims, type_id, offset))
    }
}

/// Writes GGUF v3 files: used by tests (corrupt files, small synthetic models) and by tools that
/// produce models. The file is written to a temporary name and renamed when complete.
#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<usize>, DType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor; `dims` in ggml order (innermost first), `data` already in `dtype`'s layout.
    pub fn tensor(&mut self, name: &str, dims: &[usize], dtype: DType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), dims.to_vec(), dtype, data));
        self
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut out, v);
        }
        let align = DEFAULT_ALIGNMENT as usize;
        let mut offset = 0usize;
        for (name, dims, dtype, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            out.extend_from_slice(&(*dtype as u32).to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::util::write_atomic(path, |f| f.write_all(&self.to_bytes()))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::Array(a) => {
            out.extend_from_slice(&a.elem_type.to_le_bytes());
            out.extend_from_slice(&(a.values.len() as u64).to_le_bytes());
            for v in &a.values {
                put_value(out, v);
            }
        }
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

impl MetaValue {
    /// An array of strings.
    pub fn strings<S: AsRef<str>>(items: &[S]) -> MetaValue {
        MetaValue::Array(MetaArray { elem_type: 8, values: items.iter().map(|s| MetaValue::String(s.as_ref().to_string())).collect() })
    }
    /// An array of values of one type (`elem` is a value of that type, used for its type id).
    pub fn array(elem: &MetaValue, values: Vec<MetaValue>) -> MetaValue {
        MetaValue::Array(MetaArray { elem_type: elem.type_id(), values })
    }
}
