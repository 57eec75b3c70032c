//! GGUF, llama.cpp's model file: a header, typed metadata, tensor descriptions, and aligned
//! tensor data, possibly block-quantized.
//!
//! The parser works on a byte slice (a memory map of the file, or bytes a test made), and every
//! length, count and offset it reads is checked against the slice before use: a truncated or
//! hostile file gives an [`GgufError`] naming what was wrong, never a panic or an out-of-bounds
//! read. Counts are also capped before anything is allocated from them.

use crate::error::GgufError;
use half::{bf16, f16};
use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Upper bounds that no real file reaches, so a forged count cannot make us allocate wildly.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KV: u64 = 1 << 20;
const MAX_DIMS: u32 = 8;

type Result<T> = std::result::Result<T, GgufError>;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Unsigned 8-bit integer (value type 0).
    U8(u8),
    /// Signed 8-bit integer (value type 1).
    I8(i8),
    /// Unsigned 16-bit integer (value type 2).
    U16(u16),
    /// Signed 16-bit integer (value type 3).
    I16(i16),
    /// Unsigned 32-bit integer (value type 4).
    U32(u32),
    /// Signed 32-bit integer (value type 5).
    I32(i32),
    /// 32-bit float (value type 6).
    F32(f32),
    /// Boolean, one byte, nonzero meaning true (value type 7).
    Bool(bool),
    /// UTF-8 string with a u64 byte length (value type 8).
    String(String),
    /// Values of one element type with a u64 count (value type 9); arrays nest at most three deep.
    Array(Vec<Value>),
    /// Unsigned 64-bit integer (value type 10).
    U64(u64),
    /// Signed 64-bit integer (value type 11).
    I64(i64),
    /// 64-bit float (value type 12).
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is any non-negative integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float: a float, or an integer that [`Value::as_u64`] accepts (not a
    /// negative one).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as text, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// ggml's tensor element types (the ones saescope can read, and the others by number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit IEEE float, 4 bytes a value (type 0).
    F32,
    /// 16-bit IEEE half float, 2 bytes a value (type 1).
    F16,
    /// Blocks of 32 4-bit values q and an f16 scale d, 18 bytes: x = d·(q - 8) (type 2).
    Q4_0,
    /// Blocks of 32 4-bit values q, an f16 scale d and an f16 min m, 20 bytes: x = d·q + m
    /// (type 3).
    Q4_1,
    /// Blocks of 32 5-bit values q (low nibbles, then a u32 of fifth bits) and an f16 scale d,
    /// 22 bytes: x = d·(q - 16) (type 6).
    Q5_0,
    /// Blocks of 32 5-bit values q, an f16 scale d and an f16 min m, 24 bytes: x = d·q + m
    /// (type 7).
    Q5_1,
    /// Blocks of 32 signed 8-bit values q and an f16 scale d, 34 bytes: x = d·q (type 8).
    Q8_0,
    /// Q4_K: super-blocks of 256 4-bit values, 144 bytes: 8 sub-blocks of 32, each with a 6-bit
    /// scale s and min m under two f16s d and dmin: x = d·s·q - dmin·m (type 12).
    Q4K,
    /// Q6_K: super-blocks of 256 6-bit values, 210 bytes: 16 sub-blocks of 16, each with a signed
    /// 8-bit scale s, under one f16 d: x = d·s·(q - 32) (type 14).
    Q6K,
    /// bfloat16 (the top 16 bits of an f32), 2 bytes a value (type 30).
    Bf16,
    /// Any other ggml type, by its number: described, but refused when its data is read.
    Other(u32),
}

impl GgmlType {
    fn from_u32(v: u32) -> Self {
        match v {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other),
        }
    }

    /// (values per block, bytes per block), or `None` for a type saescope cannot read.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }

    /// The name llama.cpp uses (`Q4_K`, `BF16`, ...), or `ggml type N` for any other type.
    pub fn name(self) -> String {
        match self {
            GgmlType::Other(v) => format!("ggml type {v}"),
            t => format!("{t:?}")
                .to_uppercase()
                .replace("4K", "4_K")
                .replace("6K", "6_K"),
        }
    }
}

/// One tensor's description. `shape` is in row-major (PyTorch) order: GGUF lists dimensions
/// innermost first, so `[in, out]` there is `[out, in]` here.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name in the file, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, outermost first (the reverse of the file's order).
    pub shape: Vec<usize>,
    /// How the elements are stored (float or block-quantized).
    pub ty: GgmlType,
    /// Absolute byte range of the data within the file.
    pub start: usize,
    /// Byte length of the data; 0 (and `start` 0) for a type saescope cannot read.
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements: the product of the shape. A zero dimension makes it 0 whatever the
    /// others (parsing checked the product of the rest fits, but only in file order, so a
    /// damaged file with a zero and two huge dimensions must not multiply the huge ones first).
    pub fn numel(&self) -> usize {
        if self.shape.contains(&0) {
            return 0;
        }
        self.shape.iter().product()
    }
}

/// A parsed GGUF file.
#[derive(Debug)]
pub struct Gguf<'a> {
    /// Format version from the header (2 or 3; others are refused).
    pub version: u32,
    /// Metadata by key (e.g. `llama.block_count`), in key order.
    pub metadata: BTreeMap<String, Value>,
    /// Every tensor's description, in the file's order.
    pub tensors: Vec<TensorInfo>,
    data: &'a [u8],
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| GgufError::Truncated {
                what: what.to_owned(),
                at: self.pos,
                len: self.buf.len(),
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| GgufError::Invalid {
            what: what.to_owned(),
            message: format!("length {len} does not fit in memory"),
        })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Invalid {
            what: what.to_owned(),
            message: "not UTF-8".into(),
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Invalid {
                        what: format!("metadata `{key}`"),
                        message: "arrays nested too deeply".into(),
                    });
                }
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                // Every element takes at least one byte: a count beyond the bytes left is forged.
                let left = (self.buf.len() - self.pos) as u64;
                if n > left {
                    return Err(GgufError::Truncated {
                        what: format!("array `{key}` of {n} elements"),
                        at: self.pos,
                        len: self.buf.len(),
                    });
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(GgufError::Invalid {
                    what: format!("metadata `{key}`"),
                    message: format!("unknown value type {other}"),
                });
            }
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parses the header, metadata and tensor descriptions, and checks that every tensor's data
    /// lies inside `data`. Tensor data is not touched until asked for.
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let mut c = Cursor { buf: data, pos: 0 };
        let magic: [u8; 4] = c.array("magic")?;
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > MAX_TENSORS || n_kv > MAX_KV {
            return Err(GgufError::Invalid {
                what: "header".into(),
                message: format!(
                    "{n_tensors} tensors and {n_kv} metadata entries is not plausible"
                ),
            });
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Metadata {
                        key: "general.alignment".into(),
                        message: format!("{v:?} is not a power of two"),
                    });
                }
            },
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor {i} name"))?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid {
                    what: format!("tensor `{name}`"),
                    message: format!("{n_dims} dimensions"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty = GgmlType::from_u32(c.u32(&name)?);
            let offset = c.u64(&name)?;
            raw.push((name, dims, ty, offset));
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let invalid = |message: String| GgufError::Invalid {
                what: format!("tensor `{name}`"),
                message,
            };
            let numel = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| invalid(format!("dimensions {dims:?} overflow")))?;
            if offset % alignment != 0 {
                return Err(invalid(format!(
                    "offset {offset} is not aligned to {alignment}"
                )));
            }
            // Unknown types are described but have no known size; they fail only when read.
            let (start, len) = match ty.block() {
                Some((per_block, bytes)) => {
                    if dims[0] % per_block as u64 != 0 {
                        return Err(invalid(format!(
                            "innermost dimension {} is not a multiple of the {} block size {per_block}",
                            dims[0],
                            ty.name()
                        )));
                    }
                    let len = (numel / per_block as u64)
                        .checked_mul(bytes as u64)
                        .ok_or_else(|| invalid(format!("dimensions {dims:?} overflow")))?;
                    let start = data_start
                        .checked_add(offset)
                        .filter(|s| s.checked_add(len).is_some_and(|e| e <= data.len() as u64))
                        .ok_or_else(|| {
                            invalid(format!(
                                "data at {}+{offset}, {len} bytes, runs past the end of the file ({} bytes)",
                                data_start,
                                data.len()
                            ))
                        })?;
                    (start as usize, len as usize)
                }
                None => (0, 0),
            };
            let shape = dims.iter().rev().map(|&d| d as usize).collect();
            tensors.push(TensorInfo {
                name,
                shape,
                ty,
                start,
                len,
            });
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            data,
        })
    }

    /// A tensor's description by name, or `None` if the file has no such tensor.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, converted by `convert` (which names what it expects).
    fn required<T>(
        &self,
        key: &str,
        expected: &str,
        convert: impl Fn(&Value) -> Option<T>,
    ) -> Result<T> {
        let v = self.get(key).ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            message: "missing".into(),
        })?;
        convert(v).ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            message: format!("expected {expected}, found {v:?}"),
        })
    }

    /// A required unsigned-integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.required(key, "an unsigned integer", Value::as_u64)
    }

    /// A required float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.required(key, "a number", Value::as_f64)
    }

    /// A tensor's values as f32, dequantized.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.into()))?;
        let bytes = &self.data[t.start..t.start + t.len];
        dequantize(t.ty, bytes, t.numel()).ok_or_else(|| GgufError::UnsupportedType {
            name: name.into(),
            ty: t.ty.name(),
        })
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `numel` values of type `ty` from `bytes` (which must hold exactly that many
/// blocks); `None` for a type saescope cannot read.
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Option<Vec<f32>> {
    let (per_block, block_bytes) = ty.block()?;
    debug_assert_eq!(bytes.len(), numel / per_block * block_bytes);
    let mut out = Vec::with_capacity(numel);
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        GgmlType::Bf16 => {
            out.extend(blocks.map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()))
        }
        GgmlType::Q8_0 => {
            for b in blocks {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            // Element j is the low nibble of byte j; element j + 16 is its high nibble.
            for b in blocks {
                let d = f16_at(b, 0);
                let (m, qs) = if ty == GgmlType::Q4_1 {
                    (f16_at(b, 2), &b[4..20])
                } else {
                    (-8.0 * d, &b[2..18])
                };
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            // As Q4_0/Q4_1, with bit j of the u32 the fifth bit of element j.
            for b in blocks {
                let d = f16_at(b, 0);
                let (m, rest) = if ty == GgmlType::Q5_1 {
                    (f16_at(b, 2), &b[4..24])
                } else {
                    (-16.0 * d, &b[2..22])
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let fifth = |j: usize| (((qh >> j) & 1) << 4) as u8;
                out.extend((0..16).map(|j| ((qs[j] & 0xF) | fifth(j)) as f32 * d + m));
                out.extend((0..16).map(|j| ((qs[j] >> 4) | fifth(j + 16)) as f32 * d + m));
            }
        }
        GgmlType::Q4K => {
            for b in blocks {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (chunk, q) in qs.chunks_exact(32).enumerate() {
                    let (s1, m1) = scale_min_k4(2 * chunk, scales);
                    let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                    out.extend(q.iter().map(|&x| d1 * (x & 0xF) as f32 - m1));
                    out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - m2));
                }
            }
        }
        GgmlType::Q6K => {
            for b in blocks {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                // Two halves of 128 values; each takes 64 bytes of ql, 32 of qh, 8 scales.
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
        GgmlType::Other(_) => return None,
    }
    Some(out)
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K super-block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A damaged file can carry a zero dimension beside two huge ones: parsing accepts it (the
    /// product in file order is 0), and counting elements must not overflow on the huge pair.
    #[test]
    fn a_zero_dimension_beside_huge_ones_counts_no_elements() {
        let t = TensorInfo {
            name: "damaged".into(),
            shape: vec![usize::MAX / 2, 4, 0],
            ty: GgmlType::F32,
            start: 0,
            len: 0,
        };
        assert_eq!(t.numel(), 0);
    }
}
