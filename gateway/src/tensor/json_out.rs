//! Writing tensors as the protocol's JSON, straight into a byte buffer.
//!
//! Every answer and every prediction record is JSON with the same few
//! fixed keys; serde's derived serializers spent most of their time on
//! those keys and on escaping strings that need none. This writes the
//! keys as literals, copies strings that need no escape, and leaves the
//! numbers to serde_json's own formatter, so the bytes are exactly what
//! `serde_json` writes for the same values (the tests hold both to it).

use serde_json::ser::{CompactFormatter, Formatter};

use super::{Tensor, TensorData};

/// Appends `s` as a JSON string.
pub fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `str` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends an unsigned integer.
pub fn uint(out: &mut Vec<u8>, v: u64) {
    let _ = CompactFormatter.write_u64(out, v);
}

/// Appends `tensor` as the protocol's tensor object: its elements inline
/// (`data`), or, when `binary_size` is given, the size of its binary
/// section (`parameters.binary_data_size`) and no `data`.
pub fn tensor(out: &mut Vec<u8>, tensor: &Tensor, binary_size: Option<usize>) {
    out.extend_from_slice(b"{\"name\":");
    string(out, &tensor.name);
    out.extend_from_slice(b",\"datatype\":\"");
    out.extend_from_slice(tensor.datatype().as_str().as_bytes());
    out.extend_from_slice(b"\",\"shape\":[");
    for (i, d) in tensor.shape.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = CompactFormatter.write_i64(out, *d);
    }
    out.push(b']');
    match binary_size {
        Some(n) => {
            out.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            uint(out, n as u64);
            out.extend_from_slice(b"}}");
        }
        None => {
            out.extend_from_slice(b",\"data\":");
            data(out, &tensor.data);
            out.push(b'}');
        }
    }
}

/// Appends `[t, …]` of tensors with their elements inline.
pub fn tensors(out: &mut Vec<u8>, ts: &[Tensor]) {
    out.push(b'[');
    for (i, t) in ts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        tensor(out, t, None);
    }
    out.push(b']');
}

/// Appends the elements as a flat JSON array. Non-finite floats are
/// `null`, as serde_json writes them.
pub fn data(out: &mut Vec<u8>, data: &TensorData) {
    fn all<T: Copy>(out: &mut Vec<u8>, v: &[T], mut one: impl FnMut(&mut Vec<u8>, T)) {
        out.push(b'[');
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            one(out, *x);
        }
        out.push(b']');
    }
    fn f32(out: &mut Vec<u8>, x: f32) {
        if x.is_finite() {
            let _ = CompactFormatter.write_f32(out, x);
        } else {
            out.extend_from_slice(b"null");
        }
    }
    let f = &mut CompactFormatter;
    match data {
        TensorData::Bool(v) => all(out, v, |o, x| {
            let _ = f.write_bool(o, x);
        }),
        TensorData::Uint8(v) => all(out, v, |o, x| {
            let _ = f.write_u8(o, x);
        }),
        TensorData::Uint16(v) => all(out, v, |o, x| {
            let _ = f.write_u16(o, x);
        }),
        TensorData::Uint32(v) => all(out, v, |o, x| {
            let _ = f.write_u32(o, x);
        }),
        TensorData::Uint64(v) => all(out, v, |o, x| {
            let _ = f.write_u64(o, x);
        }),
        TensorData::Int8(v) => all(out, v, |o, x| {
            let _ = f.write_i8(o, x);
        }),
        TensorData::Int16(v) => all(out, v, |o, x| {
            let _ = f.write_i16(o, x);
        }),
        TensorData::Int32(v) => all(out, v, |o, x| {
            let _ = f.write_i32(o, x);
        }),
        TensorData::Int64(v) => all(out, v, |o, x| {
            let _ = f.write_i64(o, x);
        }),
        TensorData::Fp16(v) => all(out, v, |o, x| f32(o, x.to_f32())),
        TensorData::Fp32(v) => all(out, v, f32),
        TensorData::Fp64(v) => all(out, v, |o, x| {
            if x.is_finite() {
                let _ = f.write_f64(o, x);
            } else {
                o.extend_from_slice(b"null");
            }
        }),
        TensorData::Bytes(v) => {
            out.push(b'[');
            for (i, b) in v.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, &String::from_utf8_lossy(b));
            }
            out.push(b']');
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;
    use serde::Serialize;

    use super::*;
    use crate::tensor::json::JsonData;

    /// The serde shape these functions write by hand.
    #[derive(Serialize)]
    struct Reference<'a> {
        name: &'a str,
        datatype: &'static str,
        shape: &'a [i64],
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<Size>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<JsonData<'a>>,
    }

    #[derive(Serialize)]
    struct Size {
        binary_data_size: usize,
    }

    fn reference(t: &Tensor, binary: Option<usize>) -> Vec<u8> {
        serde_json::to_vec(&Reference {
            name: &t.name,
            datatype: t.datatype().as_str(),
            shape: &t.shape,
            parameters: binary.map(|n| Size {
                binary_data_size: n,
            }),
            data: binary.is_none().then_some(JsonData(&t.data)),
        })
        .unwrap()
    }

    fn every_datatype() -> Vec<TensorData> {
        vec![
            TensorData::Bool(vec![true, false]),
            TensorData::Uint8(vec![0, 255]),
            TensorData::Uint16(vec![0, u16::MAX]),
            TensorData::Uint32(vec![0, u32::MAX]),
            TensorData::Uint64(vec![0, u64::MAX]),
            TensorData::Int8(vec![i8::MIN, 0, i8::MAX]),
            TensorData::Int16(vec![i16::MIN, -1]),
            TensorData::Int32(vec![i32::MIN, 7]),
            TensorData::Int64(vec![i64::MIN, i64::MAX]),
            TensorData::Fp16(vec![f16::from_f32(0.5), f16::NAN, f16::from_f32(-3.25)]),
            TensorData::Fp32(vec![
                0.1,
                -2.0,
                1e-7,
                3.4e38,
                f32::MIN_POSITIVE,
                f32::NAN,
                f32::INFINITY,
                -0.0,
                123_456.79,
            ]),
            TensorData::Fp64(vec![0.1, 1e300, f64::NEG_INFINITY, -0.0, 2.5e-308]),
            TensorData::Bytes(vec![
                b"plain".to_vec(),
                b"quote \" slash \\ newline \n tab \t bell \x07".to_vec(),
                "ünïcödé ✓".as_bytes().to_vec(),
                vec![0xff, 0xfe, b'x'],
                Vec::new(),
            ]),
            TensorData::Fp32(Vec::new()),
        ]
    }

    #[test]
    fn tensors_are_written_byte_for_byte_as_serde_writes_them() {
        let names = [
            "x",
            "in\"put\\0",
            "tab\there",
            "ünï",
            "ctl\u{1}\u{1f}\u{7f}",
        ];
        for (i, data) in every_datatype().into_iter().enumerate() {
            let t = Tensor {
                name: names[i % names.len()].to_string(),
                shape: vec![data.len() as i64, 1, -1],
                data,
            };
            for binary in [None, Some(0), Some(12_345)] {
                let mut out = Vec::new();
                tensor(&mut out, &t, binary);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&reference(&t, binary))
                );
            }
        }
    }

    #[test]
    fn strings_escape_exactly_as_serde_does() {
        for s in [
            "",
            "a",
            "\"",
            "\\",
            "\u{0}",
            "\n\r\t",
            "\u{7f}é",
            "end\u{1f}",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}
