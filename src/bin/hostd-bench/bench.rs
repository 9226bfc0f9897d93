//! `hostd-bench`: measure dscode-hostd against the floor of the same machine,
//! in the same run.
//!
//! ```text
//! cargo run --release --bin hostd-bench -- [SCENARIO…] [--json] [--repeats N] [--idle-secs S]
//! ```
//!
//! Scenarios: rpc-latency rpc-throughput spawn stop exit-to-event scale idle
//! fanout relay ready flood verify (default: all). Every scenario starts its own real
//! daemon (the `dscode-hostd` binary beside this one) on a temp socket. The
//! figure is the median over `--repeats` runs; the floor is measured the same
//! way in the same run.
//!
//! The daemons log at `error` to the bench's stderr; `HOSTD_BENCH_LOG=info`
//! (any `RUST_LOG` filter) shows their state changes, for profiling.
//! `HOSTD_BENCH_CONFIG` is appended to every daemon's config (for example
//! `HOSTD_BENCH_CONFIG=$'[sandbox]\ncgroup = "off"'`), to see what one
//! setting costs.
//!
//! This file reads the options and runs the scenarios; each family is its
//! own file (`rpc.rs`, `spawn.rs`, `events.rs`, `scale.rs`, `relay.rs`,
//! `ready.rs`, `flood.rs`, `verify.rs`), over the shared `daemon.rs` (a real
//! daemon and a raw connection), `floor.rs` (the echo floor), `forward.rs`
//! (the relay's two-hop floor) and `report.rs`
//! (rows, medians, the table).

use std::path::Path;

use anyhow::{Context, bail};

use crate::report::{Row, print_table};
use crate::{events, flood, ready, relay, rpc, scale, spawn, verify};

const ALL: &[&str] = &[
    "rpc-latency",
    "rpc-throughput",
    "spawn",
    "stop",
    "exit-to-event",
    "scale",
    "idle",
    "fanout",
    "relay",
    "ready",
    "flood",
    "verify",
];

pub(crate) struct Opts {
    scenarios: Vec<String>,
    json: bool,
    pub(crate) repeats: usize,
    pub(crate) idle_secs: u64,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        scenarios: Vec::new(),
        json: false,
        repeats: 3,
        idle_secs: 30,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => o.json = true,
            "--sandbox-off" => {
                crate::daemon::SANDBOX_OFF.store(true, std::sync::atomic::Ordering::Relaxed)
            }
            "--repeats" => o.repeats = args.next().context("--repeats N")?.parse()?,
            "--idle-secs" => o.idle_secs = args.next().context("--idle-secs S")?.parse()?,
            "--echo-server" => {
                crate::floor::echo_server(Path::new(&args.next().context("--echo-server PATH")?))?;
                std::process::exit(0);
            }
            "--forward" => {
                let listen = args.next().context("--forward LISTEN TARGET")?;
                let target = args.next().context("--forward LISTEN TARGET")?;
                crate::forward::forward_server(Path::new(&listen), Path::new(&target))?;
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!(
                    "usage: hostd-bench [SCENARIO…] [--json] [--repeats N] [--idle-secs S]\nscenarios: {}",
                    ALL.join(" ")
                );
                std::process::exit(0);
            }
            s if ALL.contains(&s) => o.scenarios.push(s.to_string()),
            s => bail!(
                "unknown scenario or option {s:?}; scenarios: {}",
                ALL.join(" ")
            ),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = ALL.iter().map(|s| s.to_string()).collect();
    }
    Ok(o)
}

pub fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    raise_nofile();
    let mut rows = Vec::new();
    for s in &opts.scenarios {
        eprintln!("== {s}");
        let r = match s.as_str() {
            "rpc-latency" => rpc::rpc_latency(&opts),
            "rpc-throughput" => rpc::rpc_throughput(&opts),
            "spawn" => spawn::spawn(&opts),
            "stop" => spawn::stop(&opts),
            "exit-to-event" => events::exit_to_event(&opts),
            "scale" => scale::scale(&opts),
            "idle" => scale::idle(&opts),
            "fanout" => events::fanout(&opts),
            "relay" => relay::relay(&opts),
            "ready" => ready::ready(&opts),
            "flood" => flood::flood(&opts),
            "verify" => verify::verify(&opts),
            _ => unreachable!(),
        };
        match r {
            Ok(mut v) => rows.append(&mut v),
            Err(e) => {
                eprintln!("{s} failed: {e:#}");
                rows.push(Row {
                    scenario: s.clone(),
                    metric: "error".into(),
                    value: f64::NAN,
                    unit: String::new(),
                    floor: None,
                    ratio: None,
                    target: String::new(),
                    pass: Some(false),
                    note: format!("{e:#}"),
                });
            }
        }
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
