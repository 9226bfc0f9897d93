//! The control socket's decoder and dispatcher: arbitrary bytes, split at
//! arbitrary points, must never panic, and every reply must be one line of
//! valid JSON.
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use dscode_hostd::lines::{BoundedLines, Line};
use dscode_hostd::rpc::transport::Dispatcher;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

struct World {
    rt: tokio::runtime::Runtime,
    dispatcher: Dispatcher,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dispatcher = rt.block_on(async { dscode_hostd::rpc::fuzzing::dispatcher() });
        World { rt, dispatcher }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let (cut, data) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c).max(1), rest),
        None => return,
    };
    let mut codec = BoundedLines::new(4096);
    let mut buf = BytesMut::new();
    let mut lines = Vec::new();
    for chunk in data.chunks(cut) {
        buf.extend_from_slice(chunk);
        while let Ok(Some(l)) = codec.decode(&mut buf) {
            lines.push(l);
        }
        assert!(buf.len() <= 4096 + cut, "decoder buffered {} bytes", buf.len());
    }
    while let Ok(Some(l)) = codec.decode_eof(&mut buf) {
        lines.push(l);
    }
    w.rt.block_on(async {
        for l in lines {
            if let Line::Complete(b) = l
                && let Some(reply) = w.dispatcher.handle_line(&b).await
            {
                let text = reply.json.get();
                assert!(!text.contains('\n'), "reply spans lines: {text}");
                let _: serde_json::Value = serde_json::from_str(text).expect("reply is JSON");
            }
        }
    });
});
