//! Accepting control connections: peer check, connection limit, one task per
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use jsonrpsee::Methods;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::transport::{self, Limits};

/// Server settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub per_connection: Limits,
}

/// Whether a peer with effective uid `peer` may talk to a daemon running as
/// `me`: the same user, or root.
pub fn peer_allowed(peer: u32, me: u32) -> bool {
    peer == me || peer == 0
}

#[cfg(unix)]
fn check_peer(stream: &Stream) -> bool {
    use interprocess::local_socket::traits::StreamCommon as _;
    let me = crate::paths::current_uid();
    match stream.peer_creds() {
        Ok(creds) => match creds.euid() {
            Some(uid) if peer_allowed(uid, me) => true,
            other => {
                tracing::warn!(peer_uid = ?other, pid = ?creds.pid(), "refused a connection from another user");
                false
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; refusing the connection");
            false
        }
    }
}

#[cfg(not(unix))]
fn check_peer(_stream: &Stream) -> bool {
    // Named pipes are created with a default DACL for the current user.
    true
}

/// Accept connections until `shutdown` turns true, then wait (briefly) for the
/// open connections to flush and close.
pub async fn run(
    listener: Listener,
    methods: Methods,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let next_id = AtomicUsize::new(1);
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let mut stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        if !check_peer(&stream) {
            continue; // closed without a reply
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                max = limits.max_connections,
                "connection refused: too many connections"
            );
            conns.spawn(async move {
                let _ = stream
                    .write_all(transport::too_many_connections_line().as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let conn_id = next_id.fetch_add(1, Ordering::Relaxed);
        let methods = methods.clone();
        let sd = shutdown.clone();
        conns.spawn(async move {
            transport::serve(stream, methods, conn_id, limits.per_connection, sd).await;
            drop(permit);
        });
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_self_and_root_are_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(65534, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(65534, 0));
    }
}
