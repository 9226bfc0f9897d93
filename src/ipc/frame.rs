//! The DSCode extension-host wire format: a 4-byte big-endian length, then
//! that many bytes of UTF-8 JSON `{id, type, payload}`.
//!
//! The decoder refuses a zero length and a length over the limit before
//! reading (or allocating) the body, and invalid JSON after reading it. Any
//! of those ends the channel: the peer is no longer trustworthy.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_util::codec::{Decoder, Encoder};

/// Why a host's frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("zero-length frame")]
    ZeroLength,
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("invalid JSON in frame: {0}")]
    InvalidJson(#[from] serde_json::Error),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// One message. `id` is kept raw (a string in practice, a number tolerated)
/// so it can be echoed exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub id: Box<RawValue>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "null_payload")]
    pub payload: Box<RawValue>,
}

fn null_payload() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

impl Message {
    /// The key replies are matched by.
    pub fn id_key(&self) -> &str {
        self.id.get()
    }

    /// For `<t>-response` / `<t>-error`: the request type and whether it failed.
    pub fn reply_to(&self) -> Option<(&str, bool)> {
        if let Some(t) = self.kind.strip_suffix("-response") {
            Some((t, false))
        } else {
            self.kind.strip_suffix("-error").map(|t| (t, true))
        }
    }

    /// `<type>-error` with `payload: {"error": message}`, answering `self`.
    pub fn error_reply(&self, message: &str) -> Message {
        Message {
            id: self.id.clone(),
            kind: format!("{}-error", self.kind),
            payload: serde_json::value::to_raw_value(&serde_json::json!({ "error": message }))
                .expect("JSON"),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    pub fn new(max: usize) -> Self {
        FrameCodec { max }
    }
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        if len > self.max {
            return Err(FrameError::TooLong { len, max: self.max });
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let body = src.split_to(len);
        Ok(Some(serde_json::from_slice(&body)?))
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = serde_json::to_vec(msg)?;
        if body.is_empty() || body.len() > self.max {
            return Err(FrameError::TooLong {
                len: body.len(),
                max: self.max,
            });
        }
        dst.reserve(4 + body.len());
        dst.put_u32(body.len() as u32);
        dst.extend_from_slice(&body);
        Ok(())
    }
}

/// Encode one message as bytes (length prefix included).
pub fn encode(msg: &Message, max: usize) -> Result<BytesMut, FrameError> {
    let mut b = BytesMut::new();
    FrameCodec::new(max).encode(msg, &mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, kind: &str, payload: &str) -> Message {
        Message {
            id: RawValue::from_string(format!("\"{id}\"")).unwrap(),
            kind: kind.into(),
            payload: RawValue::from_string(payload.into()).unwrap(),
        }
    }

    fn decode_all(max: usize, chunks: &[&[u8]]) -> Result<Vec<Message>, FrameError> {
        let mut c = FrameCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for ch in chunks {
            buf.extend_from_slice(ch);
            while let Some(m) = c.decode(&mut buf)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let m = msg("req_1", "echo", r#"{"a":[1,2]}"#);
        let bytes = encode(&m, 1024).unwrap();
        assert_eq!(&bytes[..4], &((bytes.len() - 4) as u32).to_be_bytes());
        let out = decode_all(1024, &[&bytes]).unwrap();
        assert_eq!(out[0].kind, "echo");
        assert_eq!(out[0].id_key(), "\"req_1\"");
        assert_eq!(out[0].payload.get(), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn zero_huge_and_invalid_are_refused() {
        assert!(matches!(
            decode_all(64, &[&[0, 0, 0, 0]]),
            Err(FrameError::ZeroLength)
        ));
        // 4 GiB announced: refused from the header alone, nothing allocated.
        assert!(matches!(
            decode_all(64, &[&[0xff, 0xff, 0xff, 0xff]]),
            Err(FrameError::TooLong { .. })
        ));
        let mut bad = 5u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{bad}");
        assert!(matches!(
            decode_all(64, &[&bad]),
            Err(FrameError::InvalidJson(_))
        ));
    }

    #[test]
    fn replies_name_their_request_type() {
        assert_eq!(
            msg("1", "ping-response", "{}").reply_to(),
            Some(("ping", false))
        );
        assert_eq!(
            msg("1", "ping-error", "{}").reply_to(),
            Some(("ping", true))
        );
        assert_eq!(msg("1", "ping", "{}").reply_to(), None);
        let e = msg("1", "window-show", "{}").error_reply("no editor attached");
        assert_eq!(e.kind, "window-show-error");
        assert_eq!(e.payload.get(), r#"{"error":"no editor attached"}"#);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn chunking_does_not_change_the_messages(
                ids in proptest::collection::vec("[a-z0-9_]{1,8}", 1..8),
                cut in 1usize..13,
            ) {
                let mut bytes = Vec::new();
                for id in &ids {
                    bytes.extend_from_slice(&encode(&msg(id, "t", "{}"), 1024).unwrap());
                }
                let chunks: Vec<&[u8]> = bytes.chunks(cut).collect();
                let out = decode_all(1024, &chunks).unwrap();
                let got: Vec<String> = out.iter().map(|m| m.id_key().trim_matches('"').to_string()).collect();
                prop_assert_eq!(got, ids);
            }

            #[test]
            fn truncated_input_never_yields_a_message(len in 1u32..100, have in 0usize..100) {
                let mut bytes = len.to_be_bytes().to_vec();
                bytes.extend(std::iter::repeat_n(b' ', have.min(len as usize - 1)));
                let out = decode_all(1024, &[&bytes]).unwrap();
                prop_assert!(out.is_empty());
            }
        }
    }
}
