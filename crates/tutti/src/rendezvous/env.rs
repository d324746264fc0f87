//! The environment, parsed once into a typed [`Bootstrap`]: who am I (rank), how many are we
//! (world size), who shares my host (local rank and size), and where the store is.
//!
//! # Sources of rank and size
//! The first source with its rank or size variable set wins; the later ones are ignored (logged at
//! `debug`), so `torchrun` inside an `srun` allocation is read as torchrun.
//!
//! | launcher    | rank                 | world size             | local rank                  | local size                     |
//! |-------------|----------------------|------------------------|-----------------------------|--------------------------------|
//! | torchrun    | `RANK`               | `WORLD_SIZE`           | `LOCAL_RANK`                | `LOCAL_WORLD_SIZE`             |
//! | Open MPI    | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | `OMPI_COMM_WORLD_LOCAL_SIZE` |
//! | Slurm       | `SLURM_PROCID`       | `SLURM_NTASKS`         | `SLURM_LOCALID`             | see below                      |
//! | PMI (Hydra) | `PMI_RANK`           | `PMI_SIZE`             | `MPI_LOCALRANKID`           | `MPI_LOCALNRANKS`              |
//!
//! `tutti launch` sets the torchrun variables plus `TUTTI_LAUNCHER=1` ([`Launcher::Tutti`]).
//! With none of them set, the process is a world of one ([`Launcher::Standalone`]).
//!
//! Rank and size come as a pair: one without the other is an error. The local pair is optional:
//! when neither variable is set (a hand-written `RANK`/`WORLD_SIZE`), the process is taken to be
//! alone on its host (local rank 0 of 1); tutti never relies on local ranks for correctness
//! (shared-memory routing compares host identities), they are hints for placement.
//!
//! Slurm's local size: `SLURM_NTASKS_PER_NODE` when set (only with `--ntasks-per-node`), else the
//! entry of this node (`SLURM_NODEID`) in `SLURM_STEP_TASKS_PER_NODE` or `SLURM_TASKS_PER_NODE`
//! (format `2(x3),1`: three nodes with 2 tasks, then one with 1). When none is usable, the local
//! size is the smallest value consistent with `SLURM_LOCALID`: local rank + 1.
//!
//! # The store
//! - `TUTTI_STORE=file:/shared/dir` ([`StoreSpec::File`]) or `TUTTI_STORE=tcp://host:port`;
//! - else `MASTER_ADDR` (+ `MASTER_PORT`, default 29500 like torchrun's `--master-port`): a TCP
//!   store on rank 0, or on the launcher's agent when `TUTTI_USE_AGENT_STORE=1`;
//! - a world of one needs no store; a larger world without one is an error naming the variables.
//!
//! `MASTER_PORT` without `MASTER_ADDR` is an error (a forgotten variable, not a choice).
//! With a file store, `TUTTI_BIND_ADDR` (an IP address) is where the ranks listen for each other
//! (default loopback: one host).
//! `TUTTI_INIT_TIMEOUT` (seconds, fractions allowed, default 60, at most [`MAX_TIMEOUT_SECS`])
//! bounds the whole start-up.
//!
//! The job secret (see [`crate::auth`]): `TUTTI_SECRET` (the secret itself) or
//! `TUTTI_SECRET_FILE` (a file holding it); `TUTTI_JOB_ID` (a number, decimal or `0x` hex)
//! names the job in the store's log.
//! Variables set to an empty (or all-blank) string count as unset; values are trimmed.

use super::route::host_port;
use crate::auth::Secret;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The port of the store when `MASTER_ADDR` is set and `MASTER_PORT` is not (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29_500;
/// Start-up time limit when `TUTTI_INIT_TIMEOUT` is not set.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest time limit a variable may set, in seconds (about 31 years): beyond it a value is
/// a mistake, and a `Duration` cannot hold every `f64` (1e20 seconds would overflow it).
pub const MAX_TIMEOUT_SECS: f64 = 1e9;

/// A positive, finite number of seconds of at most [`MAX_TIMEOUT_SECS`], as a `Duration`;
/// `None` for anything else (negative, zero, NaN, infinite, too large, not a number).
pub fn parse_secs(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    if !(secs > 0.0 && secs <= MAX_TIMEOUT_SECS) {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// What a process learns from its environment before talking to anyone.
///
/// Invariants: `rank < world_size`, `local_rank < local_world_size <= world_size`, and `store` is
/// `Some` whenever `world_size > 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    /// `MASTER_ADDR`/`MASTER_PORT`, when set (the store's address unless `TUTTI_STORE` says
    /// otherwise; also a hint for which network interface faces the cluster).
    pub master: Option<MasterAddr>,
    /// Where the ranks meet; `None` only for a world of one without any store variable.
    pub store: Option<StoreSpec>,
    pub launcher: Launcher,
    /// The time limit of the whole start-up (store, handshakes).
    pub init_timeout: Duration,
    /// The launcher hosts the TCP store: rank 0 must connect to it, not serve one.
    pub use_agent_store: bool,
    /// The job secret (`TUTTI_SECRET` or `TUTTI_SECRET_FILE`); `None`: unauthenticated.
    pub secret: Option<Secret>,
    /// The job id (`TUTTI_JOB_ID`; 0 when unset).
    pub job_id: u64,
    /// The address to listen on with a file store, where no master address says which
    /// interface faces the other hosts (`TUTTI_BIND_ADDR`; `None`: loopback, one host).
    pub bind_addr: Option<std::net::IpAddr>,
}

/// `MASTER_ADDR` and `MASTER_PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterAddr {
    /// A host name or an IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

/// Where the store is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// A TCP store at `host:port` (IPv6 host without brackets).
    Tcp { host: String, port: u16 },
    /// A directory on a file system shared by every rank.
    File(PathBuf),
}

/// Who started the process (read from which variables it found).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Launcher {
    Torchrun,
    OpenMpi,
    Slurm,
    Pmi,
    /// `tutti launch` (torchrun's variables plus `TUTTI_LAUNCHER=1`).
    Tutti,
    /// No launcher variables: a world of one.
    Standalone,
}

/// An environment that does not describe a valid start-up. Each message names the variable and
/// its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    #[error("{var}={value} is not a non-negative integer")]
    NotAnInteger { var: &'static str, value: String },

    #[error("{var}=0: a world needs at least one rank")]
    EmptyWorld { var: &'static str },

    #[error(
        "{rank_var}={rank} is out of range for {size_var}={size} (valid ranks: 0..={})",
        size.saturating_sub(1)
    )]
    RankOutOfRange {
        rank_var: &'static str,
        rank: usize,
        size_var: &'static str,
        size: usize,
    },

    #[error("{local_var}={local} exceeds {size_var}={size}: a host cannot hold more ranks than the world")]
    LocalSizeTooLarge {
        local_var: &'static str,
        local: usize,
        size_var: &'static str,
        size: usize,
    },

    #[error("{present} is set but {missing} is not: set both")]
    Partial {
        /// `VAR=value` of the variable that is set.
        present: String,
        missing: &'static str,
    },

    #[error("{var}={value} is not a valid TCP port (1..=65535)")]
    BadPort { var: &'static str, value: String },

    #[error("TUTTI_STORE={value}: {why} (expected file:/shared/dir or tcp://host:port)")]
    BadStore { value: String, why: String },

    #[error(
        "{size_var}={world_size} needs a rendezvous store, and none is set: set MASTER_ADDR \
         (rank 0's host) and MASTER_PORT (default {DEFAULT_MASTER_PORT}), or \
         TUTTI_STORE=file:/a/directory/shared/by/all/ranks"
    )]
    NoStore {
        size_var: &'static str,
        world_size: usize,
    },

    #[error("{var}={value} is not a positive number of seconds of at most {MAX_TIMEOUT_SECS:e}")]
    BadTimeout { var: &'static str, value: String },

    #[error("{0}")]
    Secret(String),

    #[error("{var}={value} is not a flag (use 1 or 0)")]
    BadFlag { var: &'static str, value: String },

    #[error("{var}={value} is malformed: {why}")]
    Malformed {
        var: &'static str,
        value: String,
        why: String,
    },

    #[error("TUTTI_LAUNCHER=1 is set but RANK and WORLD_SIZE are not (they come together)")]
    LauncherWithoutRank,
}

impl Bootstrap {
    /// Reads the process environment (see the module doc for the variables).
    pub fn from_env() -> Result<Bootstrap, EnvError> {
        Bootstrap::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads variables through `get` (tests pass a table).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Bootstrap, EnvError> {
        let vars = Vars { get: &get };
        let world = World::parse(&vars)?;
        let master = parse_master(&vars)?;
        let store = parse_store(&vars, master.as_ref(), &world)?;
        let init_timeout =
            parse_timeout(&vars, "TUTTI_INIT_TIMEOUT")?.unwrap_or(DEFAULT_INIT_TIMEOUT);
        let use_agent_store = vars.flag("TUTTI_USE_AGENT_STORE")?.unwrap_or(false);
        let secret = Secret::from_vars(|k| vars.get(k)).map_err(EnvError::Secret)?;
        let job_id = match vars.get("TUTTI_JOB_ID") {
            None => 0,
            Some(v) => parse_job_id(&v).ok_or_else(|| EnvError::Malformed {
                var: "TUTTI_JOB_ID",
                value: v.clone(),
                why: "not a 64-bit number (decimal, or hex with 0x)".into(),
            })?,
        };
        let bind_addr = match vars.get("TUTTI_BIND_ADDR") {
            None => None,
            Some(v) => Some(v.trim().parse().map_err(|e| EnvError::Malformed {
                var: "TUTTI_BIND_ADDR",
                value: v.clone(),
                why: format!("not an IP address ({e})"),
            })?),
        };
        Ok(Bootstrap {
            rank: world.rank,
            world_size: world.size,
            local_rank: world.local_rank,
            local_world_size: world.local_size,
            master,
            store,
            launcher: world.launcher,
            init_timeout,
            use_agent_store,
            secret,
            job_id,
            bind_addr,
        })
    }

    /// True if this process must serve the TCP store: rank 0 of a TCP-store world of two or more
    /// ranks whose launcher does not host the store itself.
    pub fn serves_store(&self) -> bool {
        self.rank == 0
            && self.world_size > 1
            && !self.use_agent_store
            && matches!(self.store, Some(StoreSpec::Tcp { .. }))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Tcp { host, port } => write!(f, "tcp://{}", host_port(host, *port)),
            StoreSpec::File(dir) => write!(f, "file:{}", dir.display()),
        }
    }
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::Torchrun => "torchrun",
            Launcher::OpenMpi => "Open MPI",
            Launcher::Slurm => "Slurm",
            Launcher::Pmi => "PMI",
            Launcher::Tutti => "tutti launch",
            Launcher::Standalone => "standalone",
        })
    }
}

/// The variables one launcher sets.
struct Source {
    launcher: Launcher,
    rank: &'static str,
    size: &'static str,
    local_rank: &'static str,
    local_size: LocalSize,
}

/// How a source gives the number of ranks on this host.
enum LocalSize {
    Var(&'static str),
    Slurm,
}

/// In order of precedence.
const SOURCES: [Source; 4] = [
    Source {
        launcher: Launcher::Torchrun,
        rank: "RANK",
        size: "WORLD_SIZE",
        local_rank: "LOCAL_RANK",
        local_size: LocalSize::Var("LOCAL_WORLD_SIZE"),
    },
    Source {
        launcher: Launcher::OpenMpi,
        rank: "OMPI_COMM_WORLD_RANK",
        size: "OMPI_COMM_WORLD_SIZE",
        local_rank: "OMPI_COMM_WORLD_LOCAL_RANK",
        local_size: LocalSize::Var("OMPI_COMM_WORLD_LOCAL_SIZE"),
    },
    Source {
        launcher: Launcher::Slurm,
        rank: "SLURM_PROCID",
        size: "SLURM_NTASKS",
        local_rank: "SLURM_LOCALID",
        local_size: LocalSize::Slurm,
    },
    Source {
        launcher: Launcher::Pmi,
        rank: "PMI_RANK",
        size: "PMI_SIZE",
        local_rank: "MPI_LOCALRANKID",
        local_size: LocalSize::Var("MPI_LOCALNRANKS"),
    },
];

/// Variable access with trimming and typed parsing.
struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    /// The trimmed value, `None` if unset or blank.
    fn get(&self, var: &str) -> Option<String> {
        (self.get)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn is_set(&self, var: &str) -> bool {
        self.get(var).is_some()
    }

    fn usize(&self, var: &'static str) -> Result<Option<usize>, EnvError> {
        self.get(var)
            .map(|value| {
                value
                    .parse::<usize>()
                    .map_err(|_| EnvError::NotAnInteger { var, value })
            })
            .transpose()
    }

    fn flag(&self, var: &'static str) -> Result<Option<bool>, EnvError> {
        self.get(var)
            .map(|value| match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(EnvError::BadFlag { var, value }),
            })
            .transpose()
    }

    /// `VAR=value` for messages (the variable is known to be set).
    fn show(&self, var: &str) -> String {
        format!("{var}={}", self.get(var).unwrap_or_default())
    }

    /// Both variables of a pair, or neither; one alone is an error.
    fn pair(&self, a: &'static str, b: &'static str) -> Result<Option<(usize, usize)>, EnvError> {
        match (self.usize(a)?, self.usize(b)?) {
            (Some(x), Some(y)) => Ok(Some((x, y))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(EnvError::Partial {
                present: self.show(a),
                missing: b,
            }),
            (None, Some(_)) => Err(EnvError::Partial {
                present: self.show(b),
                missing: a,
            }),
        }
    }
}

/// Rank, size and locality, from the winning source.
struct World {
    launcher: Launcher,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
}

impl World {
    fn parse(vars: &Vars<'_>) -> Result<World, EnvError> {
        let mut present = SOURCES
            .iter()
            .filter(|s| vars.is_set(s.rank) || vars.is_set(s.size));
        let tutti = vars.flag("TUTTI_LAUNCHER")?.unwrap_or(false);
        let Some(source) = present.next() else {
            if tutti {
                return Err(EnvError::LauncherWithoutRank);
            }
            return Ok(World::standalone());
        };
        for ignored in present {
            tracing::debug!(
                "rank variables of {} ({}) ignored: {} ({}) come first",
                ignored.launcher,
                ignored.rank,
                source.launcher,
                source.rank
            );
        }
        if tutti && source.launcher != Launcher::Torchrun {
            return Err(EnvError::LauncherWithoutRank);
        }
        let world = World::from_source(vars, source)?;
        Ok(World {
            launcher: if tutti {
                Launcher::Tutti
            } else {
                world.launcher
            },
            ..world
        })
    }

    fn standalone() -> World {
        World {
            launcher: Launcher::Standalone,
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
        }
    }

    fn from_source(vars: &Vars<'_>, s: &Source) -> Result<World, EnvError> {
        let (rank, size) = rank_pair(vars, s)?;
        check_rank(s.rank, rank, s.size, size)?;
        let (local_rank, local_size, local_size_var) = match s.local_size {
            LocalSize::Var(var) => match vars.pair(s.local_rank, var)? {
                Some((lr, ls)) => (lr, ls, var),
                None => (0, 1, var),
            },
            LocalSize::Slurm => {
                let lr = vars.usize(s.local_rank)?.unwrap_or(0);
                let (ls, var) = slurm_local_size(vars, lr)?;
                (lr, ls, var)
            }
        };
        check_rank(s.local_rank, local_rank, local_size_var, local_size)?;
        if local_size > size {
            return Err(EnvError::LocalSizeTooLarge {
                local_var: local_size_var,
                local: local_size,
                size_var: s.size,
                size,
            });
        }
        Ok(World {
            launcher: s.launcher,
            rank,
            size,
            local_rank,
            local_size,
        })
    }
}

/// The rank and size of a source known to have at least one of them set.
fn rank_pair(vars: &Vars<'_>, s: &Source) -> Result<(usize, usize), EnvError> {
    match (vars.usize(s.rank)?, vars.usize(s.size)?) {
        (Some(rank), Some(size)) => Ok((rank, size)),
        (None, Some(_)) => Err(EnvError::Partial {
            present: vars.show(s.size),
            missing: s.rank,
        }),
        (_, None) => Err(EnvError::Partial {
            present: vars.show(s.rank),
            missing: s.size,
        }),
    }
}

fn check_rank(
    rank_var: &'static str,
    rank: usize,
    size_var: &'static str,
    size: usize,
) -> Result<(), EnvError> {
    if size == 0 {
        return Err(EnvError::EmptyWorld { var: size_var });
    }
    if rank >= size {
        return Err(EnvError::RankOutOfRange {
            rank_var,
            rank,
            size_var,
            size,
        });
    }
    Ok(())
}

/// Slurm's tasks on this node (see the module doc), and the variable it came from.
fn slurm_local_size(vars: &Vars<'_>, local_rank: usize) -> Result<(usize, &'static str), EnvError> {
    if let Some(n) = vars.usize("SLURM_NTASKS_PER_NODE")? {
        return Ok((n, "SLURM_NTASKS_PER_NODE"));
    }
    if let Some(node) = vars.usize("SLURM_NODEID")? {
        for var in ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"] {
            if let Some(value) = vars.get(var) {
                if let Some(n) = tasks_on_node(var, &value, node)? {
                    return Ok((n, var));
                }
            }
        }
    }
    tracing::debug!(
        "Slurm gives no tasks-per-node count; assuming local size {} from SLURM_LOCALID",
        local_rank + 1
    );
    Ok((local_rank + 1, "SLURM_LOCALID + 1"))
}

/// The count for `node` in a Slurm tasks-per-node list such as `2(x3),1`; `None` when the list is
/// shorter than `node + 1` entries.
fn tasks_on_node(var: &'static str, value: &str, node: usize) -> Result<Option<usize>, EnvError> {
    let malformed = |why: &str| EnvError::Malformed {
        var,
        value: value.to_owned(),
        why: why.to_owned(),
    };
    let mut first_node = 0usize;
    for item in value.split(',') {
        let (count, repeat) = match item.split_once("(x") {
            Some((c, r)) => {
                let r = r
                    .strip_suffix(')')
                    .ok_or_else(|| malformed("a repeat must look like 2(x3)"))?;
                (
                    c,
                    r.parse::<usize>()
                        .map_err(|_| malformed("bad repeat count"))?,
                )
            }
            None => (item, 1),
        };
        let count = count
            .trim()
            .parse::<usize>()
            .map_err(|_| malformed("bad task count"))?;
        if node < first_node.saturating_add(repeat) {
            return Ok(Some(count));
        }
        first_node = first_node.saturating_add(repeat);
    }
    Ok(None)
}

fn parse_master(vars: &Vars<'_>) -> Result<Option<MasterAddr>, EnvError> {
    let port = vars
        .get("MASTER_PORT")
        .map(|value| parse_port("MASTER_PORT", value))
        .transpose()?;
    match (vars.get("MASTER_ADDR"), port) {
        (Some(host), port) => Ok(Some(MasterAddr {
            host: unbracket(&host).to_owned(),
            port: port.unwrap_or(DEFAULT_MASTER_PORT),
        })),
        (None, Some(_)) => Err(EnvError::Partial {
            present: vars.show("MASTER_PORT"),
            missing: "MASTER_ADDR",
        }),
        (None, None) => Ok(None),
    }
}

fn parse_port(var: &'static str, value: String) -> Result<u16, EnvError> {
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(EnvError::BadPort { var, value }),
    }
}

fn parse_store(
    vars: &Vars<'_>,
    master: Option<&MasterAddr>,
    world: &World,
) -> Result<Option<StoreSpec>, EnvError> {
    if let Some(value) = vars.get("TUTTI_STORE") {
        return parse_store_url(value).map(Some);
    }
    if let Some(m) = master {
        return Ok(Some(StoreSpec::Tcp {
            host: m.host.clone(),
            port: m.port,
        }));
    }
    if world.size > 1 {
        let size_var = SOURCES
            .iter()
            .find(|s| s.launcher == world.launcher)
            .map_or("WORLD_SIZE", |s| s.size);
        return Err(EnvError::NoStore {
            size_var,
            world_size: world.size,
        });
    }
    Ok(None)
}

/// `file:/dir` (also `file:///dir`) or `tcp://host:port` (IPv6 host in brackets).
fn parse_store_url(value: String) -> Result<StoreSpec, EnvError> {
    let bad = |why: &str| EnvError::BadStore {
        value: value.clone(),
        why: why.to_owned(),
    };
    if let Some(path) = value.strip_prefix("file:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(bad("the file store needs a directory"));
        }
        return Ok(StoreSpec::File(PathBuf::from(path)));
    }
    if let Some(rest) = value.strip_prefix("tcp://") {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("a tcp store needs host:port"))?;
        let host = unbracket(host);
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(bad(&format!(
                    "port '{port}' is not a valid TCP port (1..=65535)"
                )))
            }
        };
        return Ok(StoreSpec::Tcp {
            host: host.to_owned(),
            port,
        });
    }
    let scheme = value.split_once(':').map_or(value.as_str(), |(s, _)| s);
    Err(bad(&format!("unknown scheme '{scheme}'")))
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn parse_timeout(vars: &Vars<'_>, var: &'static str) -> Result<Option<Duration>, EnvError> {
    let Some(value) = vars.get(var) else {
        return Ok(None);
    };
    match parse_secs(&value) {
        Some(d) => Ok(Some(d)),
        None => Err(EnvError::BadTimeout { var, value }),
    }
}

/// `TUTTI_JOB_ID`: decimal, or hex after `0x`.
fn parse_job_id(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
