//! Print every state change of every host, using the typed client.
//!
//! Run a daemon, then: `cargo run --example watch [-- SOCKET]`

use dscode_hostd::client::Client;
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(Client::default_socket);
    let client = Client::connect(&socket).await?;
    for host in client.list().await? {
        println!("{:<30} {}", host.extension_id, host.state);
    }
    let mut events = client.subscribe(None).await?;
    while let Some(event) = events.next().await {
        let e = event?;
        println!(
            "#{} {} {:?} -> {:?} ({})",
            e.seq,
            e.extension_id.unwrap_or_default(),
            e.from,
            e.to,
            e.reason
        );
    }
    eprintln!("the daemon went away");
    Ok(())
}
