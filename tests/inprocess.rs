//! The daemon run in the test's own process (`daemon::bind` then
//! `daemon::run` with `daemon::shutdown_on`, as mini-redis's
//! `server::run(listener, shutdown)`): the fast protocol checks, with no
//! binary to spawn and no "listening" line to wait for. Signals, sandboxing
//! and service integration stay with the real binary (`tests/daemon.rs`,
//! `tests/security.rs`, `tests/service.rs`).
//!
//! Every daemon here runs with `sandbox.cgroup = "off"`: host cgroups are
//! named by the daemon's pid, which all the daemons of this process share,
//! so one's shutdown sweep would reach another's. The one test with
//! cgroups on starts no host, and the others make no cgroup.

// Unix sockets, /proc and node fixtures.
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use dscode_hostd::daemon;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const S20: Duration = Duration::from_secs(20);

/// A daemon served by a task of this test's runtime.
struct InProcess {
    /// Removed when the test ends.
    _dir: tempfile::TempDir,
    socket: PathBuf,
    marker: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Bind a socket in a fresh temp dir and serve it. `config` is the
    /// config file's text; without a `[sandbox]` table, one that turns
    /// cgroups off and lets fixtures write in the temp dir is added.
    async fn start(config: &str) -> InProcess {
        require_node();
        let dir = scratch_dir();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut text = config.to_string();
        if !text.contains("[sandbox]") {
            text.push_str(&format!(
                "\n[sandbox]\ncgroup = \"off\"\nwritable_paths = [\"{}\"]\n",
                dir.path().display()
            ));
        }
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let opts = daemon::Options {
            config: Some(path),
            socket: Some(run.join("hostd.sock")),
            state_dir: Some(dir.path().join("state")),
        };
        let config = daemon::load_config(&opts).unwrap();
        let settings = daemon::Settings::from_config(&config, &opts).unwrap();
        let bound = daemon::bind(&settings).unwrap();
        let socket = bound.socket().to_path_buf();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon::run(
            bound,
            settings,
            daemon::shutdown_on(async {
                let _ = stopped.await;
            }),
        ));
        InProcess {
            _dir: dir,
            socket,
            marker: new_marker(),
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.socket).await
    }

    async fn raw(&self) -> RawConn {
        RawConn::connect(&self.socket).await
    }

    /// `host.start` params for a fixture, marked as this daemon's.
    fn start_params(&self, id: &str, fixture_name: &str) -> Value {
        json!({
            "extensionId": id,
            "entry": fixture(fixture_name),
            "env": { "HOSTD_TEST_MARKER": self.marker },
        })
    }

    /// Fire the shutdown future and wait for `run` to return: it must,
    /// with no host process left and the socket removed.
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.wait_returned().await;
    }

    /// Wait for `run` to return by itself (`daemon.shutdown`).
    async fn wait_returned(mut self) {
        tokio::time::timeout(S20, &mut self.task)
            .await
            .expect("daemon::run did not return within 20 s")
            .expect("daemon::run panicked")
            .expect("daemon::run failed");
        assert!(
            marker_pids(&self.marker).is_empty(),
            "host processes outlived daemon::run"
        );
        assert!(!self.socket.exists(), "the socket was left behind");
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        kill_marker_processes(&self.marker);
    }
}

fn code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_batches_and_info_in_process() {
    timed(async {
        let d = InProcess::start("").await;
        let mut c = d.raw().await;

        c.send(b"{bad\n").await;
        let v = c.line().await;
        assert_eq!((code(&v), &v["id"]), (-32700, &Value::Null));

        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"no.such\"}\n")
            .await;
        let v = c.line().await;
        assert_eq!((code(&v), &v["id"]), (-32601, &json!("s1")));

        c.send(
            b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.info\"},\
              {\"jsonrpc\":\"2.0\",\"method\":\"daemon.info\"},\
              {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"host.status\",\"params\":{}}]\n",
        )
        .await;
        let v = c.line().await;
        let replies = v.as_array().unwrap_or_else(|| panic!("not a batch: {v}"));
        assert_eq!(replies.len(), 2, "the notification gets no reply: {v}");
        let by_id = |id: i64| replies.iter().find(|r| r["id"] == id).unwrap();
        assert_eq!(by_id(1)["result"]["pid"], std::process::id());
        assert_eq!(code(by_id(2)), -32602);

        // The typed client checks the socket's directory and the
        // listener's uid, then gets the same answer.
        let typed = dscode_hostd::client::Client::connect(&d.socket)
            .await
            .unwrap();
        let info = typed.info().await.unwrap();
        assert_eq!(info.pid, std::process::id());
        assert_eq!(info.socket, d.socket.display().to_string());
        drop(typed);

        d.shut_down().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_starts_reports_its_states_and_stops_in_process() {
    timed(async {
        let d = InProcess::start("").await;
        let mut s = d.client().await;
        s.ok("host.subscribe", json!({})).await;
        let mut c = d.client().await;
        let st = c
            .ok("host.start", d.start_params("acme.one", "print-lines.js"))
            .await;
        assert_eq!(st["state"], "running", "{st}");
        let pid = st["pid"].as_i64().unwrap() as i32;
        assert!(process_alive(pid));
        wait_for_output(&mut c, "acme.one", "line 5").await;
        assert_eq!(
            c.ok("host.status", json!({"extensionId": "acme.one"}))
                .await["state"],
            "running"
        );

        let stopped = c.ok("host.stop", json!({"extensionId": "acme.one"})).await;
        assert_eq!(stopped["state"], "stopped", "{stopped}");
        assert!(!process_alive(pid), "the host outlived host.stop");

        let events = s
            .events_until(S20, |e| e["to"] == "stopped")
            .await
            .into_iter()
            .filter(|e| e["kind"] == "transition")
            .map(|e| e["to"].as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        assert_eq!(events, ["starting", "running", "stopping", "stopped"]);

        d.shut_down().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_future_stops_every_running_host() {
    timed(async {
        let d = InProcess::start("").await;
        let mut c = d.client().await;
        let mut pids = Vec::new();
        for (id, fixture) in [("acme.a", "print-lines.js"), ("acme.b", "hang.js")] {
            let st = c.ok("host.start", d.start_params(id, fixture)).await;
            pids.push(st["pid"].as_i64().unwrap() as i32);
        }
        assert_eq!(marker_pids(&d.marker).len(), 2);
        d.shut_down().await;
        assert!(pids.iter().all(|p| !process_alive(*p)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_shutdown_ends_run_without_the_future() {
    timed(async {
        let d = InProcess::start("").await;
        let mut c = d.client().await;
        c.ok("host.start", d.start_params("acme.a", "print-lines.js"))
            .await;
        c.ok("daemon.shutdown", json!({})).await;
        d.wait_returned().await;
    })
    .await;
}

/// The cgroup v1 hierarchy of `controller` the daemon uses for limits here
/// (the same path: this process is the daemon).
#[cfg(target_os = "linux")]
fn v1_root(info: &Value, controller: &str, key: &str) -> PathBuf {
    assert_eq!(
        info["sandbox"][key]["via"], "cgroup1",
        "this test needs a writable cgroup v1 {controller} hierarchy (CI runs as root on a \
         hybrid layout); daemon.info says {}",
        info["sandbox"]
    );
    dscode_hostd::cgroup::detect_v1(controller).unwrap()
}

/// At shutdown the daemon removes its own empty host cgroups from every
/// hierarchy it makes them in: cgroup2, and the v1 `memory` and `cpu` ones.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_sweep_covers_the_v1_memory_and_cpu_roots() {
    timed(async {
        let d = InProcess::start("[sandbox]\ncgroup = \"auto\"\n").await;
        let mut c = d.client().await;
        let info = c.ok("daemon.info", json!({})).await;
        // What a host's limit cgroup is named (`<daemon pid>.<id>.<n>`),
        // left behind empty: the sweep's to remove.
        let leftover = |root: &std::path::Path| {
            let p = root.join(format!("{}.acme.sweep.1", std::process::id()));
            std::fs::create_dir(&p).unwrap();
            p
        };
        let memory = leftover(&v1_root(&info, "memory", "memoryLimit"));
        let cpu = leftover(&v1_root(&info, "cpu", "cpuLimit"));
        d.shut_down().await;
        for p in [memory, cpu] {
            assert!(!p.exists(), "{} outlived the shutdown", p.display());
        }
    })
    .await;
}
