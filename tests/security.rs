//! Isolation and hygiene of the hosts' environment and processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_get_an_allowlisted_environment() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            env: vec![
                ("NODE_OPTIONS".into(), "--require /tmp/evil.js".into()),
                ("NODE_EXTRA_CA_CERTS".into(), "/tmp/ca.pem".into()),
                ("LD_PRELOAD".into(), "/tmp/evil.so".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "hunter2".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            ..Default::default()
        });
        let mut c = d.client().await;
        let out = d.dir.join("env.json");
        let mut p = start_params(&d, "acme.env", "dump-env.js", &[out.to_str().unwrap()]);
        p["env"]["EXPLICIT"] = json!("yes");
        c.ok("host.start", p).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.exists() {
            assert!(Instant::now() < deadline, "dump-env never wrote");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let env = v["env"].as_object().unwrap();
        for banned in [
            "NODE_OPTIONS",
            "NODE_EXTRA_CA_CERTS",
            "LD_PRELOAD",
            "AWS_SECRET_ACCESS_KEY",
            "NOTIFY_SOCKET",
            "DSCODE_HOSTD_SOCKET",
        ] {
            assert!(!env.contains_key(banned), "{banned} leaked to the host");
        }
        assert_eq!(env["LANG"], "C.UTF-8");
        assert_eq!(env["EXPLICIT"], "yes");
        assert!(env.contains_key("PATH"));
        let tmp = env["TMPDIR"].as_str().unwrap();
        assert!(
            tmp.starts_with(d.dir.join("state/hosts/acme.env").to_str().unwrap()),
            "{tmp}"
        );
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(tmp).unwrap().permissions())
                & 0o777;
        assert_eq!(mode, 0o700);
    })
    .await;
}
