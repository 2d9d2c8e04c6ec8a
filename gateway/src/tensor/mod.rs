//! Tensors as the Open Inference Protocol v2 names them: a datatype, a shape
//! and a flat, row-major buffer of elements. One `TensorData` variant per
//! datatype keeps every element in its native Rust type, so the same buffer
//! travels from the HTTP body to ONNX Runtime without an intermediate form.

pub mod binary;
pub mod json;
pub mod json_out;

use std::fmt;

use half::f16;

/// A tensor datatype in the protocol's spelling (`FP32`, `INT64`, `BYTES`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Bytes per element in the binary extension; `None` for `BYTES`, whose
    /// elements carry their own length prefix.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor, flat and row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// Runs `$body` with `$v` bound to the inner vector of any variant.
macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

/// Builds the variant of `$dt` around a vector made by `$make` (a generic
/// expression evaluated with the element type inferred from the variant).
macro_rules! for_datatype {
    ($dt:expr, $make:expr) => {
        match $dt {
            DataType::Bool => TensorData::Bool($make),
            DataType::Uint8 => TensorData::Uint8($make),
            DataType::Uint16 => TensorData::Uint16($make),
            DataType::Uint32 => TensorData::Uint32($make),
            DataType::Uint64 => TensorData::Uint64($make),
            DataType::Int8 => TensorData::Int8($make),
            DataType::Int16 => TensorData::Int16($make),
            DataType::Int32 => TensorData::Int32($make),
            DataType::Int64 => TensorData::Int64($make),
            DataType::Fp16 => TensorData::Fp16($make),
            DataType::Fp32 => TensorData::Fp32($make),
            DataType::Fp64 => TensorData::Fp64($make),
            DataType::Bytes => TensorData::Bytes($make),
        }
    };
}

impl TensorData {
    pub fn empty(datatype: DataType, capacity: usize) -> TensorData {
        for_datatype!(datatype, Vec::with_capacity(capacity))
    }

    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s elements; `false` (and nothing appended) when the
    /// datatypes differ.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        macro_rules! extend {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(b)) => { a.extend_from_slice(b); true })*
                    _ => false,
                }
            };
        }
        extend!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
        )
    }

    /// A copy of elements `start..end`; the caller guarantees the range.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        macro_rules! slice {
            ($($variant:ident),*) => {
                match self {
                    $(TensorData::$variant(v) => TensorData::$variant(v.get(start..end).map(<[_]>::to_vec).unwrap_or_default()),)*
                }
            };
        }
        slice!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
        )
    }
}

/// A named tensor as it crosses the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// The number of elements a shape holds, or `None` for a negative dimension
/// or an overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).ok()?;
        acc.checked_mul(d)
    })
}

/// Why tensor bytes or JSON could not be decoded; the message names the
/// problem for the client.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct DecodeError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
        }
        assert_eq!(DataType::parse("FLOAT"), None);
    }

    #[test]
    fn element_count_rejects_negative_and_overflow() {
        assert_eq!(element_count(&[2, 3]), Some(6));
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[-1, 3]), None);
        assert_eq!(element_count(&[i64::MAX, i64::MAX]), None);
    }

    #[test]
    fn extend_and_slice() {
        let mut a = TensorData::Fp32(vec![1.0, 2.0]);
        assert!(a.extend_from(&TensorData::Fp32(vec![3.0])));
        assert!(!a.extend_from(&TensorData::Int32(vec![3])));
        assert_eq!(a.slice(1, 3), TensorData::Fp32(vec![2.0, 3.0]));
    }
}
