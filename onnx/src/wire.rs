//! The protobuf wire format one message level at a time: a message split
//! into its fields as they lie on the wire, so a rewrite replaces the
//! fields it means to and copies every other byte unread. Decoding into
//! `prost` messages would drop whatever they do not declare (tensor data
//! in typed fields, subgraphs, functions, fields of later ONNX versions).

use prost::encoding::{WireType, decode_varint, encode_key, encode_varint};

/// Bytes that are not a protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid protobuf message: {0}")]
pub struct WireError(pub String);

/// One field of a message, as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub tag: u32,
    /// The whole field: key, length (if any) and value.
    pub raw: &'a [u8],
    /// The value of a length-delimited field (string, bytes, message);
    /// `None` for the other wire types.
    pub payload: Option<&'a [u8]>,
}

impl<'a> Field<'a> {
    /// The value of a length-delimited field read as text.
    pub fn text(&self) -> Result<&'a str, WireError> {
        let bytes = self
            .payload
            .ok_or_else(|| WireError(format!("field {} is not a string", self.tag)))?;
        std::str::from_utf8(bytes)
            .map_err(|_| WireError(format!("field {} is not UTF-8", self.tag)))
    }
}

/// Splits a message into its fields, in wire order.
pub fn fields(message: &[u8]) -> Result<Vec<Field<'_>>, WireError> {
    let mut out = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let start = rest;
        let key = decode_varint(&mut rest).map_err(|e| WireError(e.to_string()))?;
        let tag = u32::try_from(key >> 3)
            .ok()
            .filter(|&t| t > 0)
            .ok_or_else(|| WireError(format!("invalid field key {key}")))?;
        let payload = match key & 7 {
            0 => {
                decode_varint(&mut rest).map_err(|e| WireError(e.to_string()))?;
                None
            }
            1 => {
                rest = skip(rest, 8, tag)?;
                None
            }
            2 => {
                let len = decode_varint(&mut rest).map_err(|e| WireError(e.to_string()))?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let value = rest
                    .get(..len)
                    .ok_or_else(|| WireError(format!("field {tag} runs past the end")))?;
                rest = &rest[len..];
                Some(value)
            }
            5 => {
                rest = skip(rest, 4, tag)?;
                None
            }
            other => {
                return Err(WireError(format!(
                    "field {tag} has wire type {other} (groups are not used by ONNX)"
                )));
            }
        };
        let used = start.len() - rest.len();
        out.push(Field {
            tag,
            raw: &start[..used],
            payload,
        });
    }
    Ok(out)
}

fn skip(rest: &[u8], n: usize, tag: u32) -> Result<&[u8], WireError> {
    rest.get(n..)
        .ok_or_else(|| WireError(format!("field {tag} runs past the end")))
}

/// Appends a length-delimited field.
pub fn put(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_every_wire_type_and_keeps_the_bytes() {
        let mut msg = Vec::new();
        encode_key(1, WireType::Varint, &mut msg);
        encode_varint(300, &mut msg);
        put(2, b"hello", &mut msg);
        encode_key(3, WireType::SixtyFourBit, &mut msg);
        msg.extend_from_slice(&1.5f64.to_le_bytes());
        encode_key(4, WireType::ThirtyTwoBit, &mut msg);
        msg.extend_from_slice(&2.5f32.to_le_bytes());
        put(1000, &[], &mut msg);
        let f = fields(&msg).unwrap();
        assert_eq!(
            f.iter().map(|f| f.tag).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 1000]
        );
        assert_eq!(f[1].text().unwrap(), "hello");
        assert_eq!(f[0].payload, None);
        assert_eq!(f[4].payload, Some(&[][..]));
        assert_eq!(
            f.iter().flat_map(|f| f.raw).copied().collect::<Vec<_>>(),
            msg
        );
    }

    #[test]
    fn truncated_and_invalid_messages_are_errors() {
        let mut msg = Vec::new();
        put(2, b"hello", &mut msg);
        assert!(fields(&msg[..msg.len() - 1]).is_err());
        assert!(fields(&[0x08]).is_err(), "varint missing");
        assert!(fields(&[0x00, 0x01]).is_err(), "tag 0");
        assert!(fields(&[0x0b]).is_err(), "group start");
        assert!(
            fields(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err(),
            "huge length"
        );
        assert!(fields(&[]).unwrap().is_empty());
    }
}
