//! The params decoders and everything behind them up to the supervisor:
//! arbitrary text as the params of each method never panics, and every
//! reply is one line of valid JSON.
#![no_main]

use std::sync::OnceLock;

use dscode_hostd::protocol::names;
use dscode_hostd::protocol::params::{
    IdParams, LogsParams, RelayParams, RespondParams, StartParams, StopParams, SubscribeParams,
};
use dscode_hostd::rpc::params;
use dscode_hostd::rpc::transport::Dispatcher;
use jsonrpsee_types::Params;
use libfuzzer_sys::fuzz_target;

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

const METHODS: &[&str] = &[
    names::HOST_START,
    names::HOST_STOP,
    names::HOST_REQUEST,
    names::HOST_SEND,
    names::HOST_RESPOND,
    names::HOST_LOGS,
    names::HOST_STATUS,
    names::HOST_USAGE,
    names::HOST_REMOVE,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let p = Params::new(Some(text));
    let _ = params::parse::<StartParams>(&p);
    let _ = params::parse::<StopParams>(&p);
    let _ = params::parse::<RelayParams>(&p);
    let _ = params::parse::<RespondParams>(&p);
    let _ = params::parse::<LogsParams>(&p);
    let _ = params::parse::<SubscribeParams>(&p);
    let _ = params::parse::<IdParams>(&p);
    // Only well-formed JSON can be spliced into a request line.
    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        return;
    }
    let w = world();
    for m in METHODS {
        let line = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{m}","params":{text}}}"#);
        let reply = w.rt.block_on(w.dispatcher.handle_line(line.as_bytes()));
        let reply = reply.expect("a request with an id is answered");
        let json = reply.json.get();
        assert!(!json.contains('\n'), "reply spans lines: {json}");
        serde_json::from_str::<serde_json::Value>(json).expect("reply is JSON");
    }
});
