//! The typed client (`dscode_hostd::client`) against servers that misbehave:
//! it bounds what it reads, times out, and refuses sockets another user
//! could control, before it sends anything.

// Unix sockets, uids and /tmp.
#![cfg(unix)]

mod common;
mod fake_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use common::timed;
use dscode_hostd::client::{Client, ClientError, ClientOptions, MAX_REPLY_BYTES};
use futures_util::StreamExt;

fn options(reply: Duration, max_reply_bytes: usize) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        reply_timeout: reply,
        max_reply_bytes,
    }
}

#[test]
fn the_reply_limit_is_the_daemons() {
    // rpc/transport.rs: MAX_RESPONSE_BYTES.
    assert_eq!(MAX_REPLY_BYTES, 64 * 1024 * 1024);
    assert_eq!(ClientOptions::default().max_reply_bytes, MAX_REPLY_BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_line_over_the_limit_fails_the_call() {
    timed(async {
        let dir = fake_server::private_dir();
        let socket = dir.path().join("flood.sock");
        let written = fake_server::flooding_server(&socket, 8 << 20);
        let client = Client::connect_with(&socket, options(Duration::from_secs(30), 1 << 20))
            .await
            .unwrap();
        match client.list().await {
            Err(ClientError::ReplyTooLong { limit }) => assert_eq!(limit, 1 << 20),
            other => panic!("expected ReplyTooLong, got {other:?}"),
        }
        drop(client);
        let sent =
            tokio::task::spawn_blocking(move || written.recv_timeout(Duration::from_secs(10)))
                .await
                .unwrap()
                .unwrap();
        assert!(sent < 8 << 20, "the client read all {sent} bytes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_notification_ends_a_stream_with_the_error() {
    timed(async {
        let dir = fake_server::private_dir();
        let socket = dir.path().join("sub.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // Answer the subscribe, then send a notification line that never ends.
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let req: serde_json::Value = serde_json::from_str(&line).unwrap();
            let mut conn = conn;
            let reply = serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": 1});
            let _ = writeln!(conn, "{reply}");
            let _ = conn.write_all(br#"{"jsonrpc":"2.0","method":"host.stateChanged","params":{"subscription":1,"result":""#);
            let _ = conn.write_all(&vec![b'x'; 2 << 20]);
            let _ = reader.read_to_end(&mut Vec::new());
        });
        let client = Client::connect_with(&socket, options(Duration::from_secs(30), 1 << 20))
            .await
            .unwrap();
        let mut events = client.subscribe(None).await.unwrap();
        match events.next().await {
            Some(Err(ClientError::ReplyTooLong { limit })) => assert_eq!(limit, 1 << 20),
            other => panic!("expected ReplyTooLong, got {other:?}"),
        }
        assert!(events.next().await.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_daemon_is_a_timeout_after_the_work_a_call_asks_for() {
    timed(async {
        let dir = fake_server::private_dir();
        let socket = dir.path().join("silent.sock");
        let _conns = fake_server::silent_server(&socket);
        let reply = Duration::from_millis(300);
        let client = Client::connect_with(&socket, options(reply, MAX_REPLY_BYTES))
            .await
            .unwrap();
        let started = Instant::now();
        match client.list().await {
            Err(ClientError::Timeout { method, after }) => {
                assert_eq!(method, "host.list");
                assert_eq!(after, reply);
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        // A stop waits for its own timeout on top.
        let started = Instant::now();
        match client
            .stop("acme.x", Some(Duration::from_millis(500)))
            .await
        {
            Err(ClientError::Timeout { method, after }) => {
                assert_eq!(method, "host.stop");
                assert_eq!(after, Duration::from_millis(800));
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(800));
        let err = client.list().await.unwrap_err();
        assert!(err.is_connection());
        assert!(
            err.to_string()
                .contains("no reply to host.list within 300ms"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_in_an_open_directory_is_refused_before_connecting() {
    timed(async {
        let dir = fake_server::private_dir();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        fake_server::set_mode(&open, 0o750);
        let socket = open.join("hostd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        match Client::connect(&socket).await {
            Err(ClientError::InsecureSocketDir {
                dir,
                owner,
                mode,
                uid,
                ..
            }) => {
                assert_eq!(dir, open);
                assert_eq!(owner, uid);
                assert_eq!(mode, 0o750);
            }
            Err(e) => panic!("expected InsecureSocketDir, got {e:?}"),
            Ok(_) => panic!("connected through a 0750 directory"),
        }
        assert!(fake_server::pending_connection(&listener).is_none());
        // Made private, the same socket is accepted (and answers nothing).
        fake_server::set_mode(&open, 0o700);
        drop(Client::connect(&socket).await.unwrap());
        assert!(fake_server::pending_connection(&listener).is_some());
        // A missing socket is "not running", not a permission problem.
        match Client::connect(&open.join("nope.sock")).await {
            Err(e @ ClientError::Connect { .. }) => {
                assert!(e.to_string().contains("is the daemon running"), "{e}")
            }
            Err(e) => panic!("expected Connect, got {e:?}"),
            Ok(_) => panic!("connected to a missing socket"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_of_another_uid_gets_nothing() {
    timed(async {
        if !fake_server::is_root() {
            eprintln!("NOT RUN: making a listener of another uid needs root (CI runs as root)");
            return;
        }
        let dir = fake_server::private_dir();
        let socket = dir.path().join("impostor.sock");
        let listener = fake_server::listener_of_another_uid(&socket, fake_server::OTHER_UID);
        match Client::connect(&socket).await {
            Err(ClientError::UntrustedPeer { peer, uid, .. }) => {
                assert_eq!(peer, Some(fake_server::OTHER_UID));
                assert_eq!(uid, 0);
            }
            Err(e) => panic!("expected UntrustedPeer, got {e:?}"),
            Ok(_) => panic!("talked to another user's listener"),
        }
        let sent = fake_server::pending_connection(&listener).expect("no connection");
        assert!(sent.is_empty(), "sent {sent:?}");
    })
    .await;
}
