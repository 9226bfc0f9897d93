//! The relay's honest floor: a bare two-hop forwarder. A separate, minimal
//! tokio process accepts on a Unix socket and copies bytes both ways to the
//! host's own socket, so a client → forwarder → host round trip pays the same
//! hops as client → daemon → host, and nothing else (no JSON-RPC, no
//! re-framing, no peer checks).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::bail;

/// Runs the forwarder until killed: every connection to `listen` gets its own
/// connection to `target`, bytes copied both ways.
pub(crate) fn forward_server(listen: &Path, target: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let _ = std::fs::remove_file(listen);
        let l = tokio::net::UnixListener::bind(listen)?;
        loop {
            let (mut inbound, _) = l.accept().await?;
            let target = target.to_path_buf();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::UnixStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// A running forwarder process, killed on drop.
pub(crate) struct Forwarder {
    child: Child,
    pub(crate) path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Forwarder {
    pub(crate) fn start(target: &Path) -> anyhow::Result<Forwarder> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("forward.sock");
        let child = Command::new(std::env::current_exe()?)
            .arg("--forward")
            .arg(&path)
            .arg(target)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() {
            if Instant::now() > deadline {
                bail!("the forwarder did not start");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Forwarder {
            child,
            path,
            _dir: dir,
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
