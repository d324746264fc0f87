//! Forming the world communicator from the environment.
//!
//! 1. [`Bootstrap::from_env`] reads who we are (torchrun, Open MPI, Slurm or PMI variables).
//! 2. Rank 0 hosts the key-value store at `MASTER_ADDR:MASTER_PORT` (unless the launcher hosts
//!    it); every rank connects to it (or uses a file store on a shared path).
//! 3. Each rank listens on port 0 of the interface that routes to `MASTER_ADDR` and publishes the
//!    address it really listens on under `tutti/addr/<rank>`; rank 0 publishes a random session
//!    id that every handshake must carry (a stranger, or a rank of another job, is refused).
//! 4. Each rank publishes its host identity (`tutti/host/<rank>`: boot id and namespaces), so
//!    that every rank knows which ranks share a host (the hierarchical algorithms' topology).
//! 5. The ranks connect into a full mesh of links: TCP, moved to shared memory where both ends
//!    share a host.
//!
//! Everything is bounded by the init deadline (`TUTTI_INIT_TIMEOUT`): a busy or unreachable
//! `MASTER_PORT`, a rank that never shows up, or a stranger on the port gives a clear error.

use super::{Communicator, Config, Keepalive};
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::rendezvous::{
    client_auth, listen_addr, local_ip_towards, Bootstrap, FileStore, Launcher, ServerOptions,
    Store, StoreSpec, TcpStore, TcpStoreServer,
};
use crate::transport::mem::MemTransport;
use crate::transport::shm::{host_identity, ShmMode};
use crate::transport::tcp::TcpMeshListener;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tutti_core::algo::DEFAULT_SEGMENT_BYTES;

const SESSION_KEY: &str = "tutti/session";
/// The communicator id of the tuning's calls (the world is 0; splits hash to others).
const TUNING_COMM_ID: u64 = 0x7475_6e65; // "tune"

impl Communicator {
    /// The world communicator of this process, formed from the environment (see the module
    /// docs of `tutti::rendezvous` for the variables) with [`Config::from_env`].
    pub fn from_env() -> Result<Communicator> {
        let boot = Bootstrap::from_env().map_err(|e| Error::bootstrap(None, e.to_string()))?;
        Communicator::init(boot, Config::from_env()?)
    }

    /// The world communicator described by `boot`.
    pub fn init(boot: Bootstrap, config: Config) -> Result<Communicator> {
        if boot.world_size == 1 {
            let t = MemTransport::world(1).remove(0);
            return Ok(Communicator::with_transport(t, config));
        }
        let rank = boot.rank;
        let deadline = Deadline::after(boot.init_timeout);
        let fail = |what: String| Error::bootstrap(Some(rank), what);
        warn_if_unauthenticated(&boot);
        let mut keep: Vec<Keepalive> = Vec::new();
        let (store, bind_ip): (Box<dyn Store>, IpAddr) = match &boot.store {
            None => {
                return Err(fail(
                    "no rendezvous store: set MASTER_ADDR and MASTER_PORT, or TUTTI_STORE=file:/shared/dir".into(),
                ))
            }
            Some(StoreSpec::Tcp { host, port }) => {
                if rank == 0 && !boot.use_agent_store {
                    let opts =
                        ServerOptions::for_job(boot.world_size, boot.secret.clone(), boot.job_id);
                    let server = listen_addr(host, *port)
                        .and_then(|any| TcpStoreServer::bind_with(any, opts))
                        .map_err(|e| {
                            fail(format!("rank 0 cannot host the store on MASTER_PORT={port}: {e}"))
                        })?;
                    keep.push(Box::new(server));
                }
                let store = TcpStore::connect_as(host, *port, client_auth(&boot), deadline)
                    .map_err(|e| {
                    fail(format!("cannot reach the store at MASTER_ADDR={host} MASTER_PORT={port}: {e}"))
                })?;
                let ip = local_ip_towards(host, *port).map_err(|e| {
                    fail(format!("no local interface routes to MASTER_ADDR={host}: {e}"))
                })?;
                (Box::new(store), ip)
            }
            Some(StoreSpec::File(dir)) => {
                let store = FileStore::new(dir.clone())
                    .map_err(|e| fail(format!("file store at {}: {e}", dir.display())))?;
                // No master to route to: listen on TUTTI_BIND_ADDR, else on loopback (one host).
                let ip = boot.bind_addr.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                (Box::new(store), ip)
            }
        };
        let listener = TcpMeshListener::bind_with(bind_ip, &config.tcp)
            .map_err(|e| fail(format!("cannot listen on {bind_ip}: {e}")))?;
        tracing::debug!(rank, addr = %listener.local_addr(), "listening for the mesh");
        let session = agree_on_session(&*store, rank, deadline).map_err(fail)?;
        let addrs = exchange_addresses(
            &*store,
            rank,
            boot.world_size,
            listener.local_addr(),
            deadline,
        )
        .map_err(fail)?;
        let identity = host_identity(&config.tcp.shm.dir);
        let hosts =
            exchange_hosts(&*store, rank, boot.world_size, &identity, deadline).map_err(fail)?;
        let transport = listener
            .connect_mesh_with_secret(
                rank,
                &addrs,
                session,
                boot.secret.as_ref(),
                &config.tcp,
                deadline,
            )
            .map_err(|e| fail(e.to_string()))?;
        tracing::debug!(rank, size = boot.world_size, ?hosts, "world formed");
        keep.push(Box::new(store));
        let mut config = config;
        config.algorithms.segment_bytes = segment_for(&config, &hosts);
        let tune = config.tune.clone();
        let mut comm = Communicator::with_transport_on_hosts(transport, config, hosts);
        comm._keepalive = Arc::new(keep);
        let started = std::time::Instant::now();
        let tuning = crate::tune::agree(&comm.sibling(TUNING_COMM_ID), &tune)?;
        tracing::debug!(rank, took = ?started.elapsed(), ?tuning, "tuned");
        comm.set_tuning(tuning);
        Ok(comm)
    }
}

/// Says (once per process) that the job has no secret, so anyone who reaches the store or a
/// rank's port during start-up can join it or read what the ranks publish.
fn warn_if_unauthenticated(boot: &Bootstrap) {
    if boot.secret.is_some() || boot.store.is_none() {
        return;
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        let why = if boot.launcher == Launcher::Tutti {
            "tutti launch gave this rank no TUTTI_SECRET (an older launcher?)"
        } else {
            "neither TUTTI_SECRET nor TUTTI_SECRET_FILE is set"
        };
        tracing::warn!(
            rank = boot.rank,
            "this job is unauthenticated: {why}; any process that reaches the store or a rank's \
             port can join it or read what the ranks publish (set TUTTI_SECRET to the same \
             random string on every rank)"
        );
    });
}

/// Rank 0 draws a session id and publishes it; the others wait for it.
fn agree_on_session(store: &dyn Store, rank: usize, deadline: Deadline) -> Result<u64, String> {
    if rank == 0 {
        let session = random_session();
        store
            .set(SESSION_KEY, &session.to_le_bytes(), deadline)
            .map_err(|e| format!("publishing the session id: {e}"))?;
        return Ok(session);
    }
    let v = store
        .get(SESSION_KEY, deadline)
        .map_err(|e| format!("waiting for rank 0 to publish the session id: {e}"))?;
    let bytes: [u8; 8] = v
        .as_slice()
        .try_into()
        .map_err(|_| format!("the store holds a malformed session id ({} bytes)", v.len()))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Publishes this rank's listening address and collects everyone's.
fn exchange_addresses(
    store: &dyn Store,
    rank: usize,
    size: usize,
    mine: SocketAddr,
    deadline: Deadline,
) -> Result<Vec<SocketAddr>, String> {
    store
        .set(
            &format!("tutti/addr/{rank}"),
            mine.to_string().as_bytes(),
            deadline,
        )
        .map_err(|e| format!("publishing this rank's address: {e}"))?;
    (0..size)
        .map(|r| {
            let v = store
                .get(&format!("tutti/addr/{r}"), deadline)
                .map_err(|e| format!("waiting for rank {r} to publish its address: {e}"))?;
            String::from_utf8_lossy(&v)
                .parse()
                .map_err(|e| format!("rank {r} published a malformed address {v:?}: {e}"))
        })
        .collect()
}

/// Publishes this rank's host identity (boot id and namespaces, see
/// [`crate::transport::shm::host_identity`]) and numbers the hosts of all ranks: `hosts[r]` is
/// the index of rank `r`'s host, in order of each host's lowest rank. Every rank computes the
/// same numbering from the same published values.
fn exchange_hosts(
    store: &dyn Store,
    rank: usize,
    size: usize,
    identity: &str,
    deadline: Deadline,
) -> Result<Vec<u32>, String> {
    store
        .set(&format!("tutti/host/{rank}"), identity.as_bytes(), deadline)
        .map_err(|e| format!("publishing this rank's host identity: {e}"))?;
    let mut seen: Vec<Vec<u8>> = Vec::new();
    (0..size)
        .map(|r| {
            let id = store
                .get(&format!("tutti/host/{r}"), deadline)
                .map_err(|e| format!("waiting for rank {r} to publish its host identity: {e}"))?;
            let index = match seen.iter().position(|s| *s == id) {
                Some(i) => i,
                None => {
                    seen.push(id);
                    seen.len() - 1
                }
            };
            Ok(index as u32)
        })
        .collect()
}

/// The pipelining segment: the configured one, except that the default (1 MiB, sized for TCP)
/// becomes [`SHM_SEGMENT_BYTES`] when every rank is on this host and shared memory is allowed.
/// Every rank derives the same value from the same hosts and settings.
fn segment_for(config: &Config, hosts: &[u32]) -> usize {
    let seg = config.algorithms.segment_bytes;
    let one_host = hosts.iter().all(|&h| h == hosts[0]);
    if seg == DEFAULT_SEGMENT_BYTES && one_host && config.tcp.shm.mode != ShmMode::Off {
        SHM_SEGMENT_BYTES
    } else {
        seg
    }
}

/// The default segment of a world on one host over shared memory: measured with `tutti bench
/// all_reduce -b 64K -e 64M -f 4 -n 20` on 2 ranks, two runs each, busbw (GB/s) at 64 KiB,
/// 256 KiB, 1, 4, 16 and 64 MiB: 1 MiB segments with 4 MiB rings gave 4.2-7.4, 8.2-13.0,
/// 12.1-19.8, 5.5-5.8, 4.2-4.9, 5.7-6.1; 256 KiB with 1 MiB rings 10.4-12.1, 16.1-16.7,
/// 13.4-14.2, 11.1-13.5, 8.2-9.1, 6.1-7.2 (the data a step moves stays in the caches); 128 KiB
/// with 512 KiB rings was no better.
pub const SHM_SEGMENT_BYTES: usize = 256 << 10;

/// A session id that differs between jobs: time, process id and a stack address, mixed.
fn random_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}
