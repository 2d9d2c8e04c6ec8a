//! JSON tensor data: flat or nested arrays of numbers, booleans or strings,
//! decoded in one pass straight into the typed buffer of the declared
//! datatype (the datatype may follow `data` in the object, so the caller
//! keeps `data` as raw JSON until it knows the type).

use std::fmt;

use half::f16;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use super::{DataType, DecodeError, TensorData};

/// Decodes a JSON `data` value (flat or nested arrays) as `datatype`.
pub fn decode(
    datatype: DataType,
    raw: &RawValue,
    expected_len: usize,
) -> Result<TensorData, DecodeError> {
    fn run<T: JsonElement>(raw: &RawValue, expected_len: usize) -> Result<Vec<T>, DecodeError> {
        // Cap the pre-allocation: a huge declared shape must not allocate
        // before the data proves it is that large.
        let mut out = Vec::with_capacity(expected_len.min(1 << 20));
        let mut de = serde_json::Deserializer::from_str(raw.get());
        Flatten {
            out: &mut out,
            depth: 0,
        }
        .deserialize(&mut de)
        .map_err(|e| DecodeError(e.to_string()))?;
        Ok(out)
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(run(raw, expected_len)?),
        DataType::Uint8 => TensorData::Uint8(run(raw, expected_len)?),
        DataType::Uint16 => TensorData::Uint16(run(raw, expected_len)?),
        DataType::Uint32 => TensorData::Uint32(run(raw, expected_len)?),
        DataType::Uint64 => TensorData::Uint64(run(raw, expected_len)?),
        DataType::Int8 => TensorData::Int8(run(raw, expected_len)?),
        DataType::Int16 => TensorData::Int16(run(raw, expected_len)?),
        DataType::Int32 => TensorData::Int32(run(raw, expected_len)?),
        DataType::Int64 => TensorData::Int64(run(raw, expected_len)?),
        DataType::Fp16 => TensorData::Fp16(run(raw, expected_len)?),
        DataType::Fp32 => TensorData::Fp32(run(raw, expected_len)?),
        DataType::Fp64 => TensorData::Fp64(run(raw, expected_len)?),
        DataType::Bytes => TensorData::Bytes(run(raw, expected_len)?),
    })
}

/// An element type that JSON can hold. Each conversion returns `None` when
/// the JSON value does not fit the type (out of range, fractional integer,
/// wrong kind).
trait JsonElement: Sized {
    const DATATYPE: DataType;
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

macro_rules! integer_element {
    ($ty:ty, $dt:ident) => {
        impl JsonElement for $ty {
            const DATATYPE: DataType = DataType::$dt;
            fn from_u64(v: u64) -> Option<Self> {
                <$ty>::try_from(v).ok()
            }
            fn from_i64(v: i64) -> Option<Self> {
                <$ty>::try_from(v).ok()
            }
            fn from_f64(v: f64) -> Option<Self> {
                // 3.0 is an integer written as a float; 3.5 is not.
                if v.fract() == 0.0 && v >= <$ty>::MIN as f64 && v <= <$ty>::MAX as f64 {
                    Some(v as $ty)
                } else {
                    None
                }
            }
        }
    };
}
integer_element!(u8, Uint8);
integer_element!(u16, Uint16);
integer_element!(u32, Uint32);
integer_element!(u64, Uint64);
integer_element!(i8, Int8);
integer_element!(i16, Int16);
integer_element!(i32, Int32);
integer_element!(i64, Int64);

macro_rules! float_element {
    ($ty:ty, $dt:ident, $from:expr) => {
        impl JsonElement for $ty {
            const DATATYPE: DataType = DataType::$dt;
            fn from_u64(v: u64) -> Option<Self> {
                Some($from(v as f64))
            }
            fn from_i64(v: i64) -> Option<Self> {
                Some($from(v as f64))
            }
            fn from_f64(v: f64) -> Option<Self> {
                let x: $ty = $from(v);
                // A finite number that overflows the type is an error, not infinity.
                if f64::from(x).is_finite() {
                    Some(x)
                } else {
                    None
                }
            }
        }
    };
}
float_element!(f16, Fp16, f16::from_f64);
float_element!(f32, Fp32, |v: f64| v as f32);
float_element!(f64, Fp64, |v: f64| v);

impl JsonElement for bool {
    const DATATYPE: DataType = DataType::Bool;
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

impl JsonElement for Vec<u8> {
    const DATATYPE: DataType = DataType::Bytes;
    fn from_str(v: &str) -> Option<Self> {
        Some(v.as_bytes().to_vec())
    }
}

/// Deeper nesting than any real tensor has; stops a hostile body from
/// recursing without bound.
const MAX_DEPTH: usize = 32;

struct Flatten<'a, T> {
    out: &'a mut Vec<T>,
    depth: usize,
}

impl<'de, T: JsonElement> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<T: JsonElement> Flatten<'_, T> {
    fn push<E: de::Error>(&mut self, value: Option<T>, shown: &dyn fmt::Display) -> Result<(), E> {
        match value {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "element {} ({shown}) is not a valid {}",
                self.out.len(),
                T::DATATYPE
            ))),
        }
    }
}

impl<'de, T: JsonElement> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values", T::DATATYPE)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("data arrays are nested too deeply"));
        }
        let depth = self.depth + 1;
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), &v)
    }
    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), &v)
    }
    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), &v)
    }
    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), &v)
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.push(T::from_str(v), &format_args!("{v:?}"))
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.push(None, &"null")
    }
    fn visit_map<A: de::MapAccess<'de>>(mut self, _: A) -> Result<(), A::Error> {
        self.push(None, &"an object")
    }
}

/// Serialises tensor data as a flat JSON array.
pub struct JsonData<'a>(pub &'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fn all<S: Serializer, T: Serialize>(
            s: S,
            items: impl ExactSizeIterator<Item = T>,
        ) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for x in items {
                seq.serialize_element(&x)?;
            }
            seq.end()
        }
        match self.0 {
            TensorData::Bool(v) => all(serializer, v.iter()),
            TensorData::Uint8(v) => all(serializer, v.iter()),
            TensorData::Uint16(v) => all(serializer, v.iter()),
            TensorData::Uint32(v) => all(serializer, v.iter()),
            TensorData::Uint64(v) => all(serializer, v.iter()),
            TensorData::Int8(v) => all(serializer, v.iter()),
            TensorData::Int16(v) => all(serializer, v.iter()),
            TensorData::Int32(v) => all(serializer, v.iter()),
            TensorData::Int64(v) => all(serializer, v.iter()),
            TensorData::Fp16(v) => all(serializer, v.iter().map(|x| x.to_f32())),
            TensorData::Fp32(v) => all(serializer, v.iter()),
            TensorData::Fp64(v) => all(serializer, v.iter()),
            TensorData::Bytes(v) => all(serializer, v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn every_datatype_decodes_and_encodes() {
        let cases: &[(DataType, &str, TensorData)] = &[
            (
                DataType::Bool,
                "[true,false]",
                TensorData::Bool(vec![true, false]),
            ),
            (DataType::Uint8, "[0,255]", TensorData::Uint8(vec![0, 255])),
            (
                DataType::Uint16,
                "[0,65535]",
                TensorData::Uint16(vec![0, 65535]),
            ),
            (
                DataType::Uint32,
                "[0,4294967295]",
                TensorData::Uint32(vec![0, u32::MAX]),
            ),
            (
                DataType::Uint64,
                "[0,18446744073709551615]",
                TensorData::Uint64(vec![0, u64::MAX]),
            ),
            (
                DataType::Int8,
                "[-128,127]",
                TensorData::Int8(vec![-128, 127]),
            ),
            (
                DataType::Int16,
                "[-32768,32767]",
                TensorData::Int16(vec![i16::MIN, i16::MAX]),
            ),
            (
                DataType::Int32,
                "[-2147483648,2147483647]",
                TensorData::Int32(vec![i32::MIN, i32::MAX]),
            ),
            (
                DataType::Int64,
                "[-9223372036854775808,9223372036854775807]",
                TensorData::Int64(vec![i64::MIN, i64::MAX]),
            ),
            (
                DataType::Fp16,
                "[1.5,-2.0]",
                TensorData::Fp16(vec![f16::from_f32(1.5), f16::from_f32(-2.0)]),
            ),
            (
                DataType::Fp32,
                "[1.5,-2.25]",
                TensorData::Fp32(vec![1.5, -2.25]),
            ),
            (
                DataType::Fp64,
                "[1.5,-2.25]",
                TensorData::Fp64(vec![1.5, -2.25]),
            ),
            (
                DataType::Bytes,
                r#"["ab",""]"#,
                TensorData::Bytes(vec![b"ab".to_vec(), vec![]]),
            ),
        ];
        for (dt, text, want) in cases {
            let got = decode(*dt, &raw(text), 2).unwrap();
            assert_eq!(&got, want, "{dt}");
            let back = serde_json::to_string(&JsonData(&got)).unwrap();
            let again = decode(*dt, &raw(&back), 2).unwrap();
            assert_eq!(&again, want, "{dt} via {back}");
        }
    }

    #[test]
    fn nested_arrays_flatten_row_major() {
        let got = decode(DataType::Int32, &raw("[[1,2,3],[4,5,6]]"), 6).unwrap();
        assert_eq!(got, TensorData::Int32(vec![1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn integers_written_as_floats_are_accepted_only_when_whole() {
        assert_eq!(
            decode(DataType::Int64, &raw("[3.0]"), 1).unwrap(),
            TensorData::Int64(vec![3])
        );
        let err = decode(DataType::Int64, &raw("[3.5]"), 1).unwrap_err();
        assert!(
            err.0.contains("element 0 (3.5) is not a valid INT64"),
            "{err}"
        );
    }

    #[test]
    fn bad_elements_are_named() {
        for (dt, text, needle) in [
            (
                DataType::Int8,
                "[1,300]",
                "element 1 (300) is not a valid INT8",
            ),
            (
                DataType::Uint32,
                "[-1]",
                "element 0 (-1) is not a valid UINT32",
            ),
            (DataType::Fp32, "[1e300]", "is not a valid FP32"),
            (
                DataType::Fp32,
                r#"["x"]"#,
                "element 0 (\"x\") is not a valid FP32",
            ),
            (DataType::Bool, "[1]", "element 0 (1) is not a valid BOOL"),
            (DataType::Bytes, "[1]", "is not a valid BYTES"),
            (
                DataType::Fp32,
                "[null]",
                "element 0 (null) is not a valid FP32",
            ),
            (DataType::Fp32, "[{}]", "an object"),
        ] {
            let err = decode(dt, &raw(text), 1).unwrap_err();
            assert!(err.0.contains(needle), "{dt} {text}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let err = decode(DataType::Int32, &raw(&text), 1).unwrap_err();
        assert!(err.0.contains("nested too deeply"), "{err}");
    }

    #[test]
    fn scalar_data_is_one_element() {
        assert_eq!(
            decode(DataType::Fp32, &raw("2.5"), 1).unwrap(),
            TensorData::Fp32(vec![2.5])
        );
    }
}
