//! The documented socat/jq one-liners, run byte for byte against a real daemon.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require(tool: &str) {
    which::which(tool).unwrap_or_else(|_| {
        panic!("`{tool}` is required by the documentation tests; .ci/run installs it (apt-get install {tool})")
    });
}

/// The first ```sh block after `heading` in `doc`.
fn sh_block(doc: &str, heading: &str) -> Vec<String> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    let rest = &doc[start..];
    let open = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let close = rest[open..].find("```").unwrap();
    rest[open..open + close].lines().map(String::from).collect()
}

fn bash(script: &str, socket: &Path) -> (bool, String, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(repo())
        .env("DSCODE_HOSTD_SOCKET", socket)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_one_liners_work_as_written() {
    timed(async {
        require("socat");
        require("jq");
        let d = Daemon::start();
        let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
        let block = sh_block(&readme, "## socat and jq one-liners");
        let calls = block.iter().filter(|l| l.starts_with("rpc '")).count();
        assert!(calls >= 8, "{block:?}");
        let script = format!("set -euo pipefail\n{}\n", block.join("\n"));
        let (ok, out, err) = bash(&script, &d.socket);
        assert!(ok, "README block failed: {err}\n{out}");
        let replies: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replies.len(), calls, "{out}");
        for r in &replies {
            let items = r.as_array().cloned().unwrap_or_else(|| vec![r.clone()]);
            for i in items {
                assert_eq!(i["jsonrpc"], "2.0");
                assert!(i.get("error").is_none(), "README example failed: {i}");
            }
        }
        assert_eq!(replies[1]["result"]["state"], "running");
        assert_eq!(replies.last().unwrap().as_array().unwrap().len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_reference_examples_get_well_formed_replies() {
    timed(async {
        require("socat");
        require("jq");
        let mut d = Daemon::start();
        let doc = std::fs::read_to_string(repo().join("proto-docs/control-protocol.md")).unwrap();
        let prelude = sh_block(&doc, "The examples below use:").join("\n");
        let examples: Vec<&str> = doc.lines().filter(|l| l.starts_with("rpc '")).collect();
        assert!(examples.len() >= 12, "{examples:?}");
        let (last, rest): (Vec<&str>, Vec<&str>) =
            examples.iter().partition(|l| l.contains("daemon.shutdown"));
        for line in rest.iter().chain(last.iter()) {
            // The request exactly as documented; the doc's own jq filter is
            // dropped so every reply can be checked whole.
            let request = line.split(" | jq").next().unwrap();
            let (ok, out, err) = bash(
                &format!("set -euo pipefail\n{prelude}\n{request}\n"),
                &d.socket,
            );
            assert!(ok, "{line}: {err}");
            let reply: Value =
                serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{line}: {e}: {out}"));
            assert_eq!(reply["jsonrpc"], "2.0", "{line}: {reply}");
            assert!(
                reply.get("result").is_some() != reply.get("error").is_some(),
                "{reply}"
            );
        }
        assert_eq!(d.wait_exit(Duration::from_secs(15)).await.code(), Some(0));
    })
    .await;
}
