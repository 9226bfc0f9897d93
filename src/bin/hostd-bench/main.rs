//! `hostd-bench`: measures the daemon against this machine's floors. See
//! `bench.rs` and README §Performance.
//!
//! It measures Unix process control (fork, process groups, `/proc`), so on
//! other systems it only says so.

#[cfg(unix)]
mod bench;
#[cfg(unix)]
mod daemon;
#[cfg(unix)]
mod events;
#[cfg(unix)]
mod flood;
#[cfg(unix)]
mod floor;
#[cfg(unix)]
mod forward;
#[cfg(unix)]
mod ready;
#[cfg(unix)]
mod relay;
#[cfg(unix)]
mod report;
#[cfg(unix)]
mod rpc;
#[cfg(unix)]
mod scale;
#[cfg(unix)]
mod spawn;
#[cfg(unix)]
mod verify;

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    bench::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!("hostd-bench measures Unix process control and does not run on this OS");
    std::process::exit(2);
}
