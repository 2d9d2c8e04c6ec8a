//! Outputs that are a sequence of maps, one `{label: probability}` per
//! row: what a classifier's ZipMap gives when it is kept (`zipmap =
//! "raw"`, or a ZipMap the load-time rewrite had to leave). Read from ONNX
//! Runtime's value after the run, one map at a time.

use ort::value::{DynMapValueType, DynValue, TensorElementType, ValueType};

use super::BackendError;

/// Whether a graph output of this type is a sequence of maps that
/// [`json_rows`] and [`dense`] can read: int64 or string keys, float values.
pub fn is_readable(ty: &ValueType) -> bool {
    matches!(ty, ValueType::Sequence(inner) if matches!(
        inner.as_ref(),
        ValueType::Map { key: TensorElementType::Int64 | TensorElementType::String, value: TensorElementType::Float32 }
    ))
}

/// The rows, each in key order.
enum Rows {
    Int(Vec<Vec<(i64, f32)>>),
    Text(Vec<Vec<(String, f32)>>),
}

fn rows(name: &str, value: &DynValue) -> Result<Rows, BackendError> {
    let err = |e: ort::Error| BackendError::Run(format!("output '{name}': {e}"));
    let string_keys = match value.dtype() {
        ValueType::Sequence(inner) => matches!(
            inner.as_ref(),
            ValueType::Map {
                key: TensorElementType::String,
                ..
            }
        ),
        other => {
            return Err(BackendError::Run(format!(
                "output '{name}' is {other}, not a sequence of maps"
            )));
        }
    };
    let maps = value
        .try_extract_sequence::<DynMapValueType>()
        .map_err(err)?;
    Ok(if string_keys {
        let mut out = Vec::with_capacity(maps.len());
        for m in &maps {
            let mut row = m.try_extract_key_values::<String, f32>().map_err(err)?;
            row.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(row);
        }
        Rows::Text(out)
    } else {
        let mut out = Vec::with_capacity(maps.len());
        for m in &maps {
            let mut row = m.try_extract_key_values::<i64, f32>().map_err(err)?;
            row.sort_by_key(|kv| kv.0);
            out.push(row);
        }
        Rows::Int(out)
    })
}

/// Each row as JSON object text, keys in key order: `{"0":0.1,"1":0.9}`.
/// The raw output, served as BYTES `[rows]`.
pub fn json_rows(name: &str, value: &DynValue) -> Result<Vec<Vec<u8>>, BackendError> {
    fn object<K>(row: &[(K, f32)], key: impl Fn(&K) -> String) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * row.len() + 2);
        out.push(b'{');
        for (i, (k, v)) in row.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // A string and an f32 always serialize.
            let _ = serde_json::to_writer(&mut out, &key(k));
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, v);
        }
        out.push(b'}');
        out
    }
    Ok(match rows(name, value)? {
        Rows::Int(rows) => rows.iter().map(|r| object(r, i64::to_string)).collect(),
        Rows::Text(rows) => rows.iter().map(|r| object(r, String::clone)).collect(),
    })
}

/// The rows as one `[rows, classes]` matrix, columns in key order: the
/// ZipMap undone after ONNX Runtime, the alternative to the load-time
/// rewrite that `examples/zipmap_strategies.rs` measures.
pub fn dense(name: &str, value: &DynValue) -> Result<(Vec<i64>, Vec<f32>), BackendError> {
    fn flatten<K: PartialEq>(
        name: &str,
        rows: &[Vec<(K, f32)>],
    ) -> Result<(Vec<i64>, Vec<f32>), BackendError> {
        let first = rows.first().map_or(&[][..], Vec::as_slice);
        let mut out = Vec::with_capacity(rows.len() * first.len());
        for row in rows {
            let same = row.len() == first.len() && row.iter().zip(first).all(|(a, b)| a.0 == b.0);
            if !same {
                return Err(BackendError::Run(format!(
                    "output '{name}': rows have different keys"
                )));
            }
            out.extend(row.iter().map(|kv| kv.1));
        }
        Ok((vec![rows.len() as i64, first.len() as i64], out))
    }
    match rows(name, value)? {
        Rows::Int(rows) => flatten(name, &rows),
        Rows::Text(rows) => flatten(name, &rows),
    }
}
