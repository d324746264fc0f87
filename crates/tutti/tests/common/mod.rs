//! Helpers shared by the in-process tests.
#![allow(dead_code)]

use std::time::Duration;
use tutti::{Communicator, Config};

/// Runs `f` on every rank of an in-process world of `n` ranks, one thread each, and returns the
/// results in rank order. A panicking rank fails the test with its rank in the message.
pub fn on_world<R: Send + 'static>(
    n: usize,
    config: Config,
    f: impl Fn(Communicator) -> R + Send + Sync + Clone + 'static,
) -> Vec<R> {
    on_hosts(&vec![0; n], config, f)
}

/// As [`on_world`], with rank `r` taken to run on host `hosts[r]`.
pub fn on_hosts<R: Send + 'static>(
    hosts: &[u32],
    config: Config,
    f: impl Fn(Communicator) -> R + Send + Sync + Clone + 'static,
) -> Vec<R> {
    let comms = Communicator::in_process_on_hosts(hosts, config).expect("in-process world");
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            let f = f.clone();
            let rank = c.rank();
            std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn(move || f(c))
                .expect("spawn rank thread")
        })
        .collect();
    handles
        .into_iter()
        .enumerate()
        .map(|(r, h)| h.join().unwrap_or_else(|_| panic!("rank {r} panicked")))
        .collect()
}

/// A config whose calls give up after `secs` seconds (tests must never hang).
pub fn quick(secs: u64) -> Config {
    Config {
        timeout: Duration::from_secs(secs),
        ..Config::default()
    }
}
