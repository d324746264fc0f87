//! Rendezvous: how the processes of a job find each other before any collective can run.
//!
//! Three questions, answered in this order:
//! 1. **Who am I, how many are we?** The launcher says so in environment variables, which
//!    [`Bootstrap::from_env`] parses once into a typed value: torchrun and `tutti launch`
//!    (`RANK`, `WORLD_SIZE`, ...), Open MPI (`OMPI_COMM_WORLD_*`), Slurm (`SLURM_PROCID`, ...) or
//!    PMI (`PMI_RANK`, `PMI_SIZE`); see [`env`] for the table and the precedence.
//! 2. **Where do we meet?** A [`Store`]: a small key-value store every rank can reach. Either a
//!    [`TcpStoreServer`] run by rank 0 (or by the launcher's agent) at `MASTER_ADDR:MASTER_PORT`,
//!    reached through [`TcpStore`] clients, or a [`FileStore`] in a shared directory
//!    (`TUTTI_STORE=file:/dir`), or a [`MemStore`] for ranks that are threads of one process.
//!    [`open_store`] picks and opens the right one for a [`Bootstrap`].
//! 3. **Where are the others?** Each rank publishes the address it listens on (the interface that
//!    faces the store's host: [`local_ip_towards`]) under its own key and waits for everyone
//!    else's; then the transport connects the ranks directly and the store is no longer used.
//!
//! # Key layout
//! Keys are UTF-8 paths under `tutti/`, one fact per key, each written once by the rank that owns
//! it and read by the others with [`Store::wait`] / [`Store::get`]:
//!
//! ```text
//! tutti/<scope>/addr/<rank>     "host:port" the rank's transport listens on
//! tutti/<scope>/host/<rank>     the rank's host identity (to route through shared memory)
//! tutti/<scope>/<name>          counters (Store::add) for arrivals, generations, barriers
//! ```
//!
//! `<scope>` separates users of one store: `world` for the world communicator, and a fresh name
//! per sub-communicator or per restart. Keys and values are bounded ([`MAX_KEY_LEN`],
//! [`MAX_VALUE_LEN`]); a file store further bounds key length by file-name length.
//!
//! Every store call takes a [`Deadline`] and every error names the store and the key
//! ([`StoreError`]); environment errors name the variable and its value ([`EnvError`]).

pub mod env;
mod file_store;
mod mem_store;
pub mod route;
mod store;
mod tcp_server;
mod tcp_store;
pub(crate) mod wire;

pub use env::{Bootstrap, EnvError, Launcher, MasterAddr, StoreSpec};
pub use file_store::FileStore;
pub use mem_store::MemStore;
pub use route::{local_ip_towards, resolve};
pub use store::{Store, StoreError, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use tcp_server::{ServerOptions, TcpStoreServer, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT};
pub use tcp_store::{ClientAuth, TcpStore};

use crate::deadline::Deadline;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The store of a job, opened for one rank. Keeps the server running while this rank hosts it:
/// hold it until every rank is done with the store.
pub struct OpenStore {
    store: Arc<dyn Store>,
    server: Option<TcpStoreServer>,
}

impl OpenStore {
    /// The store, shareable between threads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The address this rank's store server listens on, if it hosts one.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(TcpStoreServer::local_addr)
    }
}

/// Opens the store `boot` describes:
/// - a world of one (unless the launcher's agent hosts a store): a [`MemStore`], whatever the
///   variables say, so a single process never needs a free port;
/// - [`StoreSpec::File`]: a [`FileStore`] on the directory;
/// - [`StoreSpec::Tcp`]: a [`TcpStore`] client, after starting a [`TcpStoreServer`] on every
///   interface of `MASTER_ADDR`'s address family at that port when this rank serves it
///   ([`Bootstrap::serves_store`]). The hosting rank connects to its own server through
///   `host:port` too, which checks early that `MASTER_ADDR` really leads here. Server and
///   client use the job secret of `boot` (if any) and the client says it is `boot.rank`.
///
/// Connecting retries until `deadline` (rank 0 may start last).
pub fn open_store(boot: &Bootstrap, deadline: Deadline) -> Result<OpenStore, StoreError> {
    let alone = boot.world_size == 1 && !boot.use_agent_store;
    let (store, server): (Arc<dyn Store>, _) = match &boot.store {
        _ if alone => (Arc::new(MemStore::new("in-process store")), None),
        None => (Arc::new(MemStore::new("in-process store")), None),
        Some(StoreSpec::File(dir)) => (Arc::new(FileStore::new(dir.clone())?), None),
        Some(StoreSpec::Tcp { host, port }) => {
            let server = if boot.serves_store() {
                let opts =
                    ServerOptions::for_job(boot.world_size, boot.secret.clone(), boot.job_id);
                Some(TcpStoreServer::bind_with(listen_addr(host, *port)?, opts)?)
            } else {
                None
            };
            let client = TcpStore::connect_as(host, *port, client_auth(boot), deadline)?;
            (Arc::new(client), server)
        }
    };
    Ok(OpenStore { store, server })
}

/// Who `boot`'s process is, to a store: its rank, job and secret.
pub fn client_auth(boot: &Bootstrap) -> ClientAuth {
    ClientAuth {
        rank: u32::try_from(boot.rank).ok(),
        job: boot.job_id,
        secret: boot.secret.clone(),
    }
}

/// Every interface, in the address family `host` resolves to, at `port` (`0.0.0.0` or `::`,
/// the latter dual-stack where the system allows).
pub fn listen_addr(host: &str, port: u16) -> Result<SocketAddr, StoreError> {
    let target = resolve(host, port).map_err(|e| StoreError::Bind {
        addr: route::host_port(host, port),
        why: e.to_string(),
    })?;
    let any = match target.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Ok(SocketAddr::new(any, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn boot(vars: &[(&str, String)]) -> Bootstrap {
        Bootstrap::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap()
    }

    #[test]
    fn open_store_serves_on_rank_0_and_connects_on_others() {
        // A free port: bind, read, release (another process could take it; unlikely in a test).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let vars = |rank: &str| {
            vec![
                ("RANK", rank.to_owned()),
                ("WORLD_SIZE", "2".to_owned()),
                ("MASTER_ADDR", "127.0.0.1".to_owned()),
                ("MASTER_PORT", port.to_string()),
            ]
        };
        let deadline = Deadline::after(Duration::from_secs(5));
        let r0 = open_store(&boot(&vars("0")), deadline).unwrap();
        assert_eq!(r0.server_addr().map(|a| a.port()), Some(port));
        let r1 = open_store(&boot(&vars("1")), deadline).unwrap();
        assert!(r1.server_addr().is_none());
        r1.store()
            .set("tutti/world/addr/1", b"x", deadline)
            .unwrap();
        assert_eq!(
            r0.store().get("tutti/world/addr/1", deadline).unwrap(),
            b"x"
        );
    }

    #[test]
    fn a_world_of_one_gets_an_in_process_store() {
        let d = Deadline::after(Duration::from_secs(1));
        // Port 1 is never ours to bind or reach: a world of one must not try.
        let master = [
            ("MASTER_ADDR", "127.0.0.1".to_owned()),
            ("MASTER_PORT", "1".to_owned()),
        ];
        for vars in [&[][..], &master[..]] {
            let s = open_store(&boot(vars), d).unwrap();
            assert!(s.server_addr().is_none());
            assert_eq!(s.store().location(), "in-process store");
            assert_eq!(s.store().add("n", 3, d).unwrap(), 3);
        }
    }
}
