//! The IPC frame decoder: arbitrary bytes at arbitrary split points never
//! panic, never buffer a body longer than the limit (over-long frames stream
//! past), yield only compact payloads, and decode the same however the input
//! is split.
#![no_main]

use bytes::BytesMut;
use dscode_hostd::ipc::frame::{Frame, FrameCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX: usize = 64 * 1024;

fn decode(data: &[u8], cut: usize) -> (Vec<String>, bool) {
    let mut codec = FrameCodec::new(MAX);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in data.chunks(cut) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Frame::Message(m))) => {
                    assert!(!m.payload.get().contains('\n'), "payload not compact");
                    out.push(format!("{} {} {}", m.id.get(), m.kind, m.payload.get()))
                }
                Ok(Some(Frame::Skipped(n))) => out.push(format!("skipped {n}")),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        assert!(buf.capacity() <= 4 + MAX + cut + 8192, "buffered {}", buf.capacity());
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((c, rest)) = data.split_first() else { return };
    let cut = usize::from(*c).max(1);
    let whole = decode(rest, rest.len().max(1));
    let split = decode(rest, cut);
    assert_eq!(whole, split);
});
