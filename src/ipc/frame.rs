//! The DSCode extension-host wire format: a 4-byte big-endian length, then
//! that many bytes of UTF-8 JSON `{id, type, payload}`.
//!
//! A frame longer than the limit is skipped as it streams past, never
//! buffered (the real host does the same with an over-long frame): the
//! decoder yields [`Frame::Skipped`] and goes on. A zero length or invalid
//! JSON ends the channel: the peer is no longer trustworthy (the real host
//! would stall on a zero length).
//!
//! Decoded ids and payloads are compact: JSON that arrived with raw line
//! breaks (pretty-printed) is re-encoded, so a host's bytes can never break
//! the line framing of the control protocol they are relayed into.

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

    /// `<type>-response` carrying `payload`, answering `self`.
    pub fn response(&self, payload: Box<RawValue>) -> Message {
        Message {
            id: self.id.clone(),
            kind: format!("{}-response", self.kind),
            payload,
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

/// What the decoder yields.
#[derive(Debug)]
pub enum Frame {
    Message(Message),
    /// A frame of this many bytes exceeded the limit; its body is being
    /// discarded as it arrives.
    Skipped(usize),
}

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max: usize,
    /// Bytes of an over-long frame still to discard.
    skip: usize,
}

impl FrameCodec {
    pub fn new(max: usize) -> Self {
        FrameCodec { max, skip: 0 }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.skip > 0 {
            let n = self.skip.min(src.len());
            src.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        if len > self.max {
            src.advance(4);
            let n = len.min(src.len());
            src.advance(n);
            self.skip = len - n;
            return Ok(Some(Frame::Skipped(len)));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let body = src.split_to(len);
        let mut msg: Message = serde_json::from_slice(&body)?;
        compact(&mut msg.id)?;
        compact(&mut msg.payload)?;
        Ok(Some(Frame::Message(msg)))
    }
}

/// Re-encode `raw` compactly if it holds a raw line break (JSON allows them
/// only as whitespace, so the value is unchanged).
fn compact(raw: &mut Box<RawValue>) -> Result<(), serde_json::Error> {
    if raw.get().bytes().any(|b| b == b'\n' || b == b'\r') {
        let v: serde_json::Value = serde_json::from_str(raw.get())?;
        *raw = serde_json::value::to_raw_value(&v)?;
    }
    Ok(())
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

    fn decode_frames(max: usize, chunks: &[&[u8]]) -> Result<Vec<Frame>, FrameError> {
        let mut c = FrameCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for ch in chunks {
            buf.extend_from_slice(ch);
            while let Some(f) = c.decode(&mut buf)? {
                out.push(f);
            }
            assert!(
                buf.capacity() <= 8192 + 4 + max,
                "buffered {}",
                buf.capacity()
            );
        }
        Ok(out)
    }

    fn decode_all(max: usize, chunks: &[&[u8]]) -> Result<Vec<Message>, FrameError> {
        Ok(decode_frames(max, chunks)?
            .into_iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(m),
                Frame::Skipped(_) => None,
            })
            .collect())
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
    fn zero_and_invalid_are_refused() {
        assert!(matches!(
            decode_all(64, &[&[0, 0, 0, 0]]),
            Err(FrameError::ZeroLength)
        ));
        let mut bad = 5u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{bad}");
        assert!(matches!(
            decode_all(64, &[&bad]),
            Err(FrameError::InvalidJson(_))
        ));
    }

    #[test]
    fn an_over_long_frame_streams_past_and_the_next_one_decodes() {
        let big = 100_000usize;
        let mut bytes = (big as u32).to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(b'x', big));
        bytes.extend_from_slice(&encode(&msg("after", "t", "{}"), 1024).unwrap());
        // Fed in 4 KiB pieces: nothing near 100 KB is ever held.
        let chunks: Vec<&[u8]> = bytes.chunks(4096).collect();
        let frames = decode_frames(1024, &chunks).unwrap();
        assert!(
            matches!(frames[0], Frame::Skipped(n) if n == big),
            "{frames:?}"
        );
        assert!(matches!(&frames[1], Frame::Message(m) if m.id_key() == "\"after\""));
        assert_eq!(frames.len(), 2);
        // 4 GiB announced: skipped from the header alone, nothing allocated.
        let frames = decode_frames(64, &[&[0xff, 0xff, 0xff, 0xff, b'{']]).unwrap();
        assert!(matches!(frames[..], [Frame::Skipped(0xffff_ffff)]));
    }

    #[test]
    fn pretty_printed_json_comes_out_compact() {
        let body = "{\"id\": \"r\",\n \"type\": \"t\",\r\n \"payload\": [\n{\"a\": \"x\\ny\"}\n]}";
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body.as_bytes());
        let m = &decode_all(1024, &[&bytes]).unwrap()[0];
        assert_eq!(m.payload.get(), r#"[{"a":"x\ny"}]"#);
        assert!(!m.payload.get().contains('\n'));
        assert_eq!(m.id.get(), "\"r\"");
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
