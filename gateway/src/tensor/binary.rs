//! The binary tensor data extension: elements as little-endian bytes, BOOL
//! as one byte each, BYTES as a 4-byte little-endian length then the bytes.

use half::f16;

use super::{DataType, DecodeError, TensorData};

/// Decodes `count` elements of `datatype` from `bytes`, which must hold
/// exactly those elements.
pub fn decode(datatype: DataType, count: usize, bytes: &[u8]) -> Result<TensorData, DecodeError> {
    if let Some(size) = datatype.element_size() {
        let expected = count.saturating_mul(size);
        if bytes.len() != expected {
            return Err(DecodeError(format!(
                "binary data holds {} bytes, but {count} {datatype} elements need {expected}",
                bytes.len()
            )));
        }
    }
    macro_rules! fixed {
        ($variant:ident, $ty:ty, $n:literal) => {
            TensorData::$variant(
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        let mut a = [0u8; $n];
                        a.copy_from_slice(c);
                        <$ty>::from_le_bytes(a)
                    })
                    .collect(),
            )
        };
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
        DataType::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
        DataType::Uint16 => fixed!(Uint16, u16, 2),
        DataType::Int16 => fixed!(Int16, i16, 2),
        DataType::Fp16 => fixed!(Fp16, f16, 2),
        DataType::Uint32 => fixed!(Uint32, u32, 4),
        DataType::Int32 => fixed!(Int32, i32, 4),
        DataType::Fp32 => fixed!(Fp32, f32, 4),
        DataType::Uint64 => fixed!(Uint64, u64, 8),
        DataType::Int64 => fixed!(Int64, i64, 8),
        DataType::Fp64 => fixed!(Fp64, f64, 8),
        DataType::Bytes => TensorData::Bytes(decode_bytes(count, bytes)?),
    })
}

fn decode_bytes(count: usize, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, DecodeError> {
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(|| {
            DecodeError("BYTES element has a truncated 4-byte length prefix".into())
        })?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(DecodeError(format!(
                "BYTES element {} declares {len} bytes but only {} remain",
                out.len(),
                rest.len()
            )));
        }
        let (element, rest) = rest.split_at(len);
        out.push(element.to_vec());
        bytes = rest;
    }
    if out.len() != count {
        return Err(DecodeError(format!(
            "binary data holds {} BYTES elements, but the shape needs {count}",
            out.len()
        )));
    }
    Ok(out)
}

/// Appends the elements of `data` to `out` in the extension's encoding.
pub fn encode(data: &TensorData, out: &mut Vec<u8>) {
    macro_rules! fixed {
        ($v:expr) => {{
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }};
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Int8(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::Uint16(v) => fixed!(v),
        TensorData::Int16(v) => fixed!(v),
        TensorData::Fp16(v) => fixed!(v),
        TensorData::Uint32(v) => fixed!(v),
        TensorData::Int32(v) => fixed!(v),
        TensorData::Fp32(v) => fixed!(v),
        TensorData::Uint64(v) => fixed!(v),
        TensorData::Int64(v) => fixed!(v),
        TensorData::Fp64(v) => fixed!(v),
        TensorData::Bytes(v) => {
            for element in v {
                // Elements over 4 GiB cannot be framed; the body limit keeps
                // them far out of reach.
                let len = u32::try_from(element.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(element);
            }
        }
    }
}

/// The encoded size of `data` in bytes.
pub fn encoded_len(data: &TensorData) -> usize {
    match data {
        TensorData::Bytes(v) => v.iter().map(|e| 4 + e.len()).sum(),
        other => other.len() * other.datatype().element_size().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(dt: DataType) -> TensorData {
        match dt {
            DataType::Bool => TensorData::Bool(vec![true, false, true]),
            DataType::Uint8 => TensorData::Uint8(vec![0, 7, 255]),
            DataType::Uint16 => TensorData::Uint16(vec![0, 7, u16::MAX]),
            DataType::Uint32 => TensorData::Uint32(vec![0, 7, u32::MAX]),
            DataType::Uint64 => TensorData::Uint64(vec![0, 7, u64::MAX]),
            DataType::Int8 => TensorData::Int8(vec![i8::MIN, -1, i8::MAX]),
            DataType::Int16 => TensorData::Int16(vec![i16::MIN, -1, i16::MAX]),
            DataType::Int32 => TensorData::Int32(vec![i32::MIN, -1, i32::MAX]),
            DataType::Int64 => TensorData::Int64(vec![i64::MIN, -1, i64::MAX]),
            DataType::Fp16 => TensorData::Fp16(vec![f16::from_f32(-1.5), f16::ZERO, f16::MAX]),
            DataType::Fp32 => TensorData::Fp32(vec![-1.5, 0.0, f32::MAX]),
            DataType::Fp64 => TensorData::Fp64(vec![-1.5, 0.0, f64::MIN_POSITIVE]),
            DataType::Bytes => {
                TensorData::Bytes(vec![b"".to_vec(), b"a".to_vec(), vec![0, 255, 10]])
            }
        }
    }

    #[test]
    fn every_datatype_round_trips() {
        for dt in DataType::ALL {
            let data = sample(dt);
            let mut bytes = Vec::new();
            encode(&data, &mut bytes);
            assert_eq!(bytes.len(), encoded_len(&data), "{dt}");
            assert_eq!(decode(dt, 3, &bytes), Ok(data), "{dt}");
        }
    }

    #[test]
    fn wrong_sizes_are_named() {
        let err = decode(DataType::Fp32, 3, &[0u8; 8]).unwrap_err();
        assert!(
            err.0.contains("8 bytes") && err.0.contains("need 12"),
            "{err}"
        );
        let err = decode(DataType::Bytes, 1, &[5, 0, 0, 0, b'a']).unwrap_err();
        assert!(err.0.contains("declares 5 bytes"), "{err}");
        let err = decode(DataType::Bytes, 2, &[1, 0, 0, 0, b'a']).unwrap_err();
        assert!(err.0.contains("needs 2"), "{err}");
        let err = decode(DataType::Bytes, 1, &[1, 0]).unwrap_err();
        assert!(err.0.contains("truncated"), "{err}");
    }

    proptest! {
        #[test]
        fn bytes_elements_round_trip(elements in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..10)) {
            let data = TensorData::Bytes(elements.clone());
            let mut bytes = Vec::new();
            encode(&data, &mut bytes);
            prop_assert_eq!(decode(DataType::Bytes, elements.len(), &bytes), Ok(data));
        }

        #[test]
        fn fp64_round_trips_bit_exact(values in proptest::collection::vec(any::<f64>(), 0..20)) {
            let data = TensorData::Fp64(values.clone());
            let mut bytes = Vec::new();
            encode(&data, &mut bytes);
            let back = decode(DataType::Fp64, values.len(), &bytes).unwrap();
            let TensorData::Fp64(back) = back else { panic!("datatype changed") };
            prop_assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), values.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
    }
}
