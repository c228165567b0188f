//! Typed tensors, as the Open Inference Protocol names them: a [`DataType`],
//! a shape, and data held in a vector of the element type ([`TensorData`]).
//!
//! This crate knows nothing of models, cards or transports. It gives the
//! datatypes their wire names, decodes and encodes the binary tensor data
//! of the protocol (little-endian values; BYTES as a 4-byte little-endian
//! length before each element: docs/api.md, "Binary tensor data"), and
//! joins and splits tensors along their first (batch) dimension.

#![forbid(unsafe_code)]

use std::fmt;

/// An element type, by its Open Inference Protocol name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `BOOL`: one byte, 0 or 1.
    Bool,
    /// `UINT8`.
    U8,
    /// `UINT16`.
    U16,
    /// `UINT32`.
    U32,
    /// `UINT64`.
    U64,
    /// `INT8`.
    I8,
    /// `INT16`.
    I16,
    /// `INT32`.
    I32,
    /// `INT64`.
    I64,
    /// `FP16`: IEEE 754 half precision.
    F16,
    /// `FP32`.
    F32,
    /// `FP64`.
    F64,
    /// `BYTES`: byte strings (ONNX `string` tensors, which must be UTF-8).
    Bytes,
}

impl DataType {
    /// Every datatype, in the order of the protocol's table.
    pub const ALL: [Self; 13] = [
        Self::Bool,
        Self::U8,
        Self::U16,
        Self::U32,
        Self::U64,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F16,
        Self::F32,
        Self::F64,
        Self::Bytes,
    ];

    /// The protocol name (`"FP32"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "UINT8",
            Self::U16 => "UINT16",
            Self::U32 => "UINT32",
            Self::U64 => "UINT64",
            Self::I8 => "INT8",
            Self::I16 => "INT16",
            Self::I32 => "INT32",
            Self::I64 => "INT64",
            Self::F16 => "FP16",
            Self::F32 => "FP32",
            Self::F64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// The datatype named `name` (exact, upper case), if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element in the binary encoding; `None` for BYTES, whose
    /// elements carry their own length.
    pub const fn size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::Bytes => return None,
        })
    }

    /// FP16, FP32 or FP64.
    pub const fn is_float(self) -> bool {
        matches!(self, Self::F16 | Self::F32 | Self::F64)
    }

    /// One of the integer types.
    pub const fn is_integer(self) -> bool {
        matches!(
            self,
            Self::U8
                | Self::U16
                | Self::U32
                | Self::U64
                | Self::I8
                | Self::I16
                | Self::I32
                | Self::I64
        )
    }

    /// Integers and floats: the types whose values are numbers.
    pub const fn is_numeric(self) -> bool {
        self.is_float() || self.is_integer()
    }

    /// The smallest and largest value of an integer type, as i128.
    pub const fn integer_bounds(self) -> Option<(i128, i128)> {
        Some(match self {
            Self::U8 => (0, u8::MAX as i128),
            Self::U16 => (0, u16::MAX as i128),
            Self::U32 => (0, u32::MAX as i128),
            Self::U64 => (0, u64::MAX as i128),
            Self::I8 => (i8::MIN as i128, i8::MAX as i128),
            Self::I16 => (i16::MIN as i128, i16::MAX as i128),
            Self::I32 => (i32::MIN as i128, i32::MAX as i128),
            Self::I64 => (i64::MIN as i128, i64::MAX as i128),
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tensor's elements, row-major, in a vector of their own type.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// BOOL
    Bool(Vec<bool>),
    /// UINT8
    U8(Vec<u8>),
    /// UINT16
    U16(Vec<u16>),
    /// UINT32
    U32(Vec<u32>),
    /// UINT64
    U64(Vec<u64>),
    /// INT8
    I8(Vec<i8>),
    /// INT16
    I16(Vec<i16>),
    /// INT32
    I32(Vec<i32>),
    /// INT64
    I64(Vec<i64>),
    /// FP16, as the bits of each half-precision value.
    F16(Vec<u16>),
    /// FP32
    F32(Vec<f32>),
    /// FP64
    F64(Vec<f64>),
    /// BYTES
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the vector inside any variant, bound as `$v`.
macro_rules! each {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::U64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F16($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

/// The same variant as `$like`, built from `$v => $body` for each.
macro_rules! rebuild {
    ($like:expr, $v:ident => $body:expr) => {
        match $like {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::U8($v) => TensorData::U8($body),
            TensorData::U16($v) => TensorData::U16($body),
            TensorData::U32($v) => TensorData::U32($body),
            TensorData::U64($v) => TensorData::U64($body),
            TensorData::I8($v) => TensorData::I8($body),
            TensorData::I16($v) => TensorData::I16($body),
            TensorData::I32($v) => TensorData::I32($body),
            TensorData::I64($v) => TensorData::I64($body),
            TensorData::F16($v) => TensorData::F16($body),
            TensorData::F32($v) => TensorData::F32($body),
            TensorData::F64($v) => TensorData::F64($body),
            TensorData::Bytes($v) => TensorData::Bytes($body),
        }
    };
}

impl TensorData {
    /// An empty vector of `datatype`, with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> Self {
        match datatype {
            DataType::Bool => Self::Bool(Vec::with_capacity(capacity)),
            DataType::U8 => Self::U8(Vec::with_capacity(capacity)),
            DataType::U16 => Self::U16(Vec::with_capacity(capacity)),
            DataType::U32 => Self::U32(Vec::with_capacity(capacity)),
            DataType::U64 => Self::U64(Vec::with_capacity(capacity)),
            DataType::I8 => Self::I8(Vec::with_capacity(capacity)),
            DataType::I16 => Self::I16(Vec::with_capacity(capacity)),
            DataType::I32 => Self::I32(Vec::with_capacity(capacity)),
            DataType::I64 => Self::I64(Vec::with_capacity(capacity)),
            DataType::F16 => Self::F16(Vec::with_capacity(capacity)),
            DataType::F32 => Self::F32(Vec::with_capacity(capacity)),
            DataType::F64 => Self::F64(Vec::with_capacity(capacity)),
            DataType::Bytes => Self::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// The element type.
    pub const fn datatype(&self) -> DataType {
        match self {
            Self::Bool(_) => DataType::Bool,
            Self::U8(_) => DataType::U8,
            Self::U16(_) => DataType::U16,
            Self::U32(_) => DataType::U32,
            Self::U64(_) => DataType::U64,
            Self::I8(_) => DataType::I8,
            Self::I16(_) => DataType::I16,
            Self::I32(_) => DataType::I32,
            Self::I64(_) => DataType::I64,
            Self::F16(_) => DataType::F16,
            Self::F32(_) => DataType::F32,
            Self::F64(_) => DataType::F64,
            Self::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `range` (element indices), as a new vector of the same type.
    ///
    /// # Panics
    /// If the range is outside the data (a caller's bug, never input).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        rebuild!(self, v => v[range].to_vec())
    }

    /// Appends `other`'s elements; `false` (and nothing appended) if the
    /// types differ.
    pub fn extend_from(&mut self, other: &Self) -> bool {
        match (self, other) {
            (Self::Bool(a), Self::Bool(b)) => a.extend_from_slice(b),
            (Self::U8(a), Self::U8(b)) => a.extend_from_slice(b),
            (Self::U16(a), Self::U16(b)) => a.extend_from_slice(b),
            (Self::U32(a), Self::U32(b)) => a.extend_from_slice(b),
            (Self::U64(a), Self::U64(b)) => a.extend_from_slice(b),
            (Self::I8(a), Self::I8(b)) => a.extend_from_slice(b),
            (Self::I16(a), Self::I16(b)) => a.extend_from_slice(b),
            (Self::I32(a), Self::I32(b)) => a.extend_from_slice(b),
            (Self::I64(a), Self::I64(b)) => a.extend_from_slice(b),
            (Self::F16(a), Self::F16(b)) => a.extend_from_slice(b),
            (Self::F32(a), Self::F32(b)) => a.extend_from_slice(b),
            (Self::F64(a), Self::F64(b)) => a.extend_from_slice(b),
            (Self::Bytes(a), Self::Bytes(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// Element `i` as f64, for numeric types (FP16 widened; 64-bit
    /// integers past 2^53 rounded); `None` for BOOL, BYTES or past the end.
    pub fn number(&self, i: usize) -> Option<f64> {
        Some(match self {
            Self::U8(v) => f64::from(*v.get(i)?),
            Self::U16(v) => f64::from(*v.get(i)?),
            Self::U32(v) => f64::from(*v.get(i)?),
            Self::U64(v) => *v.get(i)? as f64,
            Self::I8(v) => f64::from(*v.get(i)?),
            Self::I16(v) => f64::from(*v.get(i)?),
            Self::I32(v) => f64::from(*v.get(i)?),
            Self::I64(v) => *v.get(i)? as f64,
            Self::F16(v) => f64::from(f16_to_f32(*v.get(i)?)),
            Self::F32(v) => f64::from(*v.get(i)?),
            Self::F64(v) => *v.get(i)?,
            Self::Bool(_) | Self::Bytes(_) => return None,
        })
    }

    /// Every element as f32 (numeric types only), for the defenses, which
    /// work on numbers whatever the input's type.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        if !self.datatype().is_numeric() {
            return None;
        }
        if let Self::F32(v) = self {
            return Some(v.clone());
        }
        Some(
            (0..self.len())
                .map(|i| self.number(i).unwrap_or(f64::NAN) as f32)
                .collect(),
        )
    }

    /// Numbers as `datatype` (a float or integer type), converted with
    /// Rust's `as` (the caller has checked they fit); `None` for BOOL or BYTES.
    pub fn from_f64(datatype: DataType, values: &[f64]) -> Option<Self> {
        Some(match datatype {
            DataType::U8 => Self::U8(values.iter().map(|&v| v as u8).collect()),
            DataType::U16 => Self::U16(values.iter().map(|&v| v as u16).collect()),
            DataType::U32 => Self::U32(values.iter().map(|&v| v as u32).collect()),
            DataType::U64 => Self::U64(values.iter().map(|&v| v as u64).collect()),
            DataType::I8 => Self::I8(values.iter().map(|&v| v as i8).collect()),
            DataType::I16 => Self::I16(values.iter().map(|&v| v as i16).collect()),
            DataType::I32 => Self::I32(values.iter().map(|&v| v as i32).collect()),
            DataType::I64 => Self::I64(values.iter().map(|&v| v as i64).collect()),
            DataType::F16 => Self::F16(values.iter().map(|&v| f32_to_f16(v as f32)).collect()),
            DataType::F32 => Self::F32(values.iter().map(|&v| v as f32).collect()),
            DataType::F64 => Self::F64(values.to_vec()),
            DataType::Bool | DataType::Bytes => return None,
        })
    }

    /// The binary encoding: little-endian elements, BOOL as one byte,
    /// BYTES each after its 4-byte little-endian length.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.datatype().size().unwrap_or(8) * self.len());
        self.write_le_bytes(&mut out);
        out
    }

    /// [`Self::to_le_bytes`] into `out`.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        match self {
            Self::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            Self::U8(v) => out.extend_from_slice(v),
            Self::I8(v) => out.extend(v.iter().map(|x| x.to_le_bytes()[0])),
            Self::U16(v) | Self::F16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Self::Bytes(v) => {
                for s in v {
                    // An element longer than 4 GiB cannot be in a request
                    // body Warden accepted; saturating all the same.
                    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                    out.extend(len.to_le_bytes());
                    out.extend_from_slice(s);
                }
            }
        }
    }

    /// The number of elements in a BYTES encoding, walking the length
    /// prefixes without copying anything: a caller can check it against a
    /// cap before [`TensorData::from_le_bytes`] allocates per element.
    pub fn bytes_elements(bytes: &[u8]) -> Result<usize, DecodeError> {
        let mut n = 0usize;
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return Err(DecodeError::ShortLength);
            };
            let len = u32::from_le_bytes(*len) as usize;
            let Some(tail) = tail.get(len..) else {
                return Err(DecodeError::PastTheEnd { element: n });
            };
            n += 1;
            rest = tail;
        }
        Ok(n)
    }

    /// Decodes the binary encoding of `datatype`.
    pub fn from_le_bytes(datatype: DataType, bytes: &[u8]) -> Result<Self, DecodeError> {
        fn fixed<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        if let Some(size) = datatype.size()
            && !bytes.len().is_multiple_of(size)
        {
            return Err(DecodeError::Ragged {
                datatype,
                len: bytes.len(),
            });
        }
        Ok(match datatype {
            DataType::Bool => Self::Bool(
                bytes
                    .iter()
                    .map(|&b| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        _ => Err(DecodeError::NotABool),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DataType::U8 => Self::U8(bytes.to_vec()),
            DataType::I8 => Self::I8(fixed(bytes, i8::from_le_bytes)),
            DataType::U16 => Self::U16(fixed(bytes, u16::from_le_bytes)),
            DataType::F16 => Self::F16(fixed(bytes, u16::from_le_bytes)),
            DataType::I16 => Self::I16(fixed(bytes, i16::from_le_bytes)),
            DataType::U32 => Self::U32(fixed(bytes, u32::from_le_bytes)),
            DataType::I32 => Self::I32(fixed(bytes, i32::from_le_bytes)),
            DataType::F32 => Self::F32(fixed(bytes, f32::from_le_bytes)),
            DataType::U64 => Self::U64(fixed(bytes, u64::from_le_bytes)),
            DataType::I64 => Self::I64(fixed(bytes, i64::from_le_bytes)),
            DataType::F64 => Self::F64(fixed(bytes, f64::from_le_bytes)),
            DataType::Bytes => {
                let mut out = Vec::new();
                let mut rest = bytes;
                while !rest.is_empty() {
                    let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                        return Err(DecodeError::ShortLength);
                    };
                    let len = u32::from_le_bytes(*len) as usize;
                    if len > tail.len() {
                        return Err(DecodeError::PastTheEnd { element: out.len() });
                    }
                    let (s, tail) = tail.split_at(len);
                    out.push(s.to_vec());
                    rest = tail;
                }
                Self::Bytes(out)
            }
        })
    }
}

/// Why binary tensor data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The byte count is not a multiple of the element size.
    #[error("{len} bytes is not a whole number of {datatype} elements")]
    Ragged {
        /// The datatype.
        datatype: DataType,
        /// The byte count.
        len: usize,
    },
    /// A BOOL byte other than 0 or 1.
    #[error("a BOOL element must be the byte 0 or 1")]
    NotABool,
    /// Fewer than 4 bytes left where a BYTES length was due.
    #[error("a BYTES element's 4-byte length is cut short")]
    ShortLength,
    /// A BYTES length that runs past the data.
    #[error("BYTES element {element} is longer than the data left")]
    PastTheEnd {
        /// Index of the element.
        element: usize,
    },
}

/// A named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Its name (an input or output of a model).
    pub name: String,
    /// Its dimensions.
    pub shape: Vec<usize>,
    /// Its elements, `shape.iter().product()` of them.
    pub data: TensorData,
}

impl Tensor {
    /// The element type.
    pub const fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// Elements per entry of the first dimension (the row size of a
    /// batched tensor); 1 for a scalar.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Rows `range` of a batched tensor.
    ///
    /// # Panics
    /// If the tensor has no first dimension or the range is outside it (a
    /// caller's bug, never input).
    pub fn rows(&self, range: std::ops::Range<usize>) -> Self {
        let row = self.row_len();
        let mut shape = self.shape.clone();
        shape[0] = range.len();
        Self {
            name: self.name.clone(),
            shape,
            data: self.data.slice(range.start * row..range.end * row),
        }
    }

    /// Joins batched tensors along their first dimension. `None` if the
    /// list is empty, or names, types or the other dimensions differ.
    pub fn concat(parts: &[&Self]) -> Option<Self> {
        let (first, rest) = parts.split_first()?;
        if first.shape.is_empty() {
            return None;
        }
        let mut joined = (*first).clone();
        for part in rest {
            if part.name != first.name
                || part.shape.len() != first.shape.len()
                || part.shape[1..] != first.shape[1..]
                || !joined.data.extend_from(&part.data)
            {
                return None;
            }
            joined.shape[0] += part.shape[0];
        }
        Some(joined)
    }
}

/// The elements as JSON values: numbers (FP16 widened), booleans, and
/// BYTES as strings (lossy where an element is not UTF-8).
impl serde::Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bool(v) => v.serialize(s),
            Self::U8(v) => v.serialize(s),
            Self::U16(v) => v.serialize(s),
            Self::U32(v) => v.serialize(s),
            Self::U64(v) => v.serialize(s),
            Self::I8(v) => v.serialize(s),
            Self::I16(v) => v.serialize(s),
            Self::I32(v) => v.serialize(s),
            Self::I64(v) => v.serialize(s),
            Self::F16(v) => s.collect_seq(v.iter().map(|&h| f16_to_f32(h))),
            Self::F32(v) => v.serialize(s),
            Self::F64(v) => v.serialize(s),
            Self::Bytes(v) => s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

/// `{"name", "datatype", "shape", "data"}`: an Open Inference Protocol
/// tensor in JSON.
impl serde::Serialize for Tensor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("datatype", self.datatype().as_str())?;
        map.serialize_entry("shape", &self.shape)?;
        map.serialize_entry("data", &self.data)?;
        map.end()
    }
}

/// IEEE 754 half precision (its bits) to single.
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// Single precision to half (its bits), rounding to nearest even; out of
/// range becomes infinity (callers check ranges first).
pub fn f32_to_f16(f: f32) -> u16 {
    half::f16::from_f32(f).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("fp32"), None);
        assert_eq!(DataType::parse("STRING"), None);
    }

    #[test]
    fn bytes_are_length_prefixed_and_checked() {
        let data = TensorData::Bytes(vec![b"ab".to_vec(), Vec::new(), b"xyz".to_vec()]);
        let wire = data.to_le_bytes();
        assert_eq!(&wire[..6], &[2, 0, 0, 0, b'a', b'b']);
        assert_eq!(TensorData::from_le_bytes(DataType::Bytes, &wire), Ok(data));
        // A length past the end, and a length cut short.
        assert_eq!(
            TensorData::from_le_bytes(DataType::Bytes, &[9, 0, 0, 0, b'a']),
            Err(DecodeError::PastTheEnd { element: 0 })
        );
        assert_eq!(
            TensorData::from_le_bytes(DataType::Bytes, &[1, 0, 0, 0, b'a', 1]),
            Err(DecodeError::ShortLength)
        );
        // An odd byte count for FP16; a BOOL that is not 0 or 1.
        assert!(matches!(
            TensorData::from_le_bytes(DataType::F16, &[0, 0, 0]),
            Err(DecodeError::Ragged { .. })
        ));
        assert_eq!(
            TensorData::from_le_bytes(DataType::Bool, &[0, 2]),
            Err(DecodeError::NotABool)
        );
    }

    #[test]
    fn half_floats_convert_both_ways() {
        for v in [
            0.0f32,
            1.0,
            -2.5,
            65504.0,
            0.000_061_035_156,
            5.960_464_5e-8,
        ] {
            assert_eq!(f16_to_f32(f32_to_f16(v)), v, "{v}");
        }
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    #[test]
    fn batches_join_and_split() {
        let a = Tensor {
            name: "x".into(),
            shape: vec![1, 2],
            data: TensorData::I64(vec![1, 2]),
        };
        let b = Tensor {
            name: "x".into(),
            shape: vec![2, 2],
            data: TensorData::I64(vec![3, 4, 5, 6]),
        };
        let joined = Tensor::concat(&[&a, &b]).unwrap();
        assert_eq!(joined.shape, vec![3, 2]);
        assert_eq!(joined.rows(1..3), b);
        let other = Tensor {
            shape: vec![1, 3],
            data: TensorData::I64(vec![1, 2, 3]),
            ..a.clone()
        };
        assert_eq!(Tensor::concat(&[&a, &other]), None, "inner dims differ");
    }

    fn any_data() -> impl Strategy<Value = TensorData> {
        prop_oneof![
            proptest::collection::vec(any::<bool>(), 0..20).prop_map(TensorData::Bool),
            proptest::collection::vec(any::<i8>(), 0..20).prop_map(TensorData::I8),
            proptest::collection::vec(any::<u16>(), 0..20).prop_map(TensorData::F16),
            proptest::collection::vec(any::<i32>(), 0..20).prop_map(TensorData::I32),
            proptest::collection::vec(any::<u64>(), 0..20).prop_map(TensorData::U64),
            proptest::collection::vec(any::<f64>(), 0..20).prop_map(TensorData::F64),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..9), 0..6)
                .prop_map(TensorData::Bytes),
        ]
    }

    proptest! {
        /// Every datatype survives the binary encoding (bit for bit).
        #[test]
        fn binary_round_trip(data in any_data()) {
            let wire = data.to_le_bytes();
            let back = TensorData::from_le_bytes(data.datatype(), &wire).unwrap();
            prop_assert_eq!(back.to_le_bytes(), wire);
        }

        /// Decoding arbitrary bytes never panics.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), t in 0usize..13) {
            let _ = TensorData::from_le_bytes(DataType::ALL[t], &bytes);
        }
    }
}
