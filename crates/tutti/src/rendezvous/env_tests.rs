//! Table tests of environment parsing: each launcher's variables, and each error's message.

use super::*;
use std::collections::HashMap;

fn parse(vars: &[(&str, &str)]) -> Result<Bootstrap, EnvError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Bootstrap::from_vars(|k| map.get(k).cloned())
}

fn message(vars: &[(&str, &str)]) -> String {
    match parse(vars) {
        Ok(b) => panic!("expected an error for {vars:?}, got {b:?}"),
        Err(e) => e.to_string(),
    }
}

/// A table of variables.
type Env = Vec<(&'static str, &'static str)>;

const MASTER: [(&str, &str); 2] = [("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "1234")];

fn with_master(vars: &[(&'static str, &'static str)]) -> Env {
    let mut v = vars.to_vec();
    v.extend_from_slice(&MASTER);
    v
}

#[test]
fn each_launcher_is_read() {
    // (variables, launcher, rank, size, local rank, local size)
    let cases: Vec<(Env, Launcher, usize, usize, usize, usize)> = vec![
        (
            with_master(&[
                ("RANK", "5"),
                ("WORLD_SIZE", "8"),
                ("LOCAL_RANK", "1"),
                ("LOCAL_WORLD_SIZE", "4"),
            ]),
            Launcher::Torchrun,
            5,
            8,
            1,
            4,
        ),
        (
            with_master(&[
                ("RANK", "2"),
                ("WORLD_SIZE", "3"),
                ("LOCAL_RANK", "2"),
                ("LOCAL_WORLD_SIZE", "3"),
                ("TUTTI_LAUNCHER", "1"),
            ]),
            Launcher::Tutti,
            2,
            3,
            2,
            3,
        ),
        (
            with_master(&[
                ("OMPI_COMM_WORLD_RANK", "3"),
                ("OMPI_COMM_WORLD_SIZE", "16"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "3"),
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "8"),
            ]),
            Launcher::OpenMpi,
            3,
            16,
            3,
            8,
        ),
        (
            with_master(&[
                ("SLURM_PROCID", "6"),
                ("SLURM_NTASKS", "7"),
                ("SLURM_LOCALID", "0"),
                ("SLURM_NODEID", "3"),
                ("SLURM_TASKS_PER_NODE", "2(x3),1"),
            ]),
            Launcher::Slurm,
            6,
            7,
            0,
            1,
        ),
        (
            with_master(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]),
            Launcher::Pmi,
            0,
            2,
            0,
            1,
        ),
        (vec![], Launcher::Standalone, 0, 1, 0, 1),
    ];
    for (vars, launcher, rank, size, local_rank, local_size) in cases {
        let b = parse(&vars).unwrap_or_else(|e| panic!("{vars:?}: {e}"));
        assert_eq!(b.launcher, launcher, "{vars:?}");
        assert_eq!(
            (b.rank, b.world_size, b.local_rank, b.local_world_size),
            (rank, size, local_rank, local_size),
            "{vars:?}"
        );
    }
}

#[test]
fn first_source_wins() {
    let b = parse(&with_master(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "1"),
        ("OMPI_COMM_WORLD_RANK", "9"),
        ("OMPI_COMM_WORLD_SIZE", "10"),
    ]))
    .unwrap();
    assert_eq!(
        (b.launcher, b.rank, b.world_size),
        (Launcher::Torchrun, 1, 2)
    );
    let b = parse(&with_master(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "4"),
        ("OMPI_COMM_WORLD_RANK", "3"),
        ("OMPI_COMM_WORLD_SIZE", "4"),
    ]))
    .unwrap();
    assert_eq!((b.launcher, b.rank), (Launcher::OpenMpi, 3));
}

#[test]
fn slurm_local_size_sources() {
    let base = [
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "1"),
    ];
    let local_size = |extra: &[(&'static str, &'static str)]| {
        let mut v = with_master(&base);
        v.extend_from_slice(extra);
        parse(&v).map(|b| b.local_world_size)
    };
    assert_eq!(local_size(&[("SLURM_NTASKS_PER_NODE", "4")]), Ok(4));
    let listed = [("SLURM_NODEID", "2"), ("SLURM_TASKS_PER_NODE", "3(x2),2")];
    assert_eq!(local_size(&listed), Ok(2));
    let step = [
        ("SLURM_NODEID", "0"),
        ("SLURM_STEP_TASKS_PER_NODE", "4,4"),
        ("SLURM_TASKS_PER_NODE", "1(x8)"),
    ];
    assert_eq!(local_size(&step), Ok(4));
    // Nothing usable: the smallest size consistent with SLURM_LOCALID=1.
    assert_eq!(local_size(&[]), Ok(2));
    assert_eq!(
        local_size(&[("SLURM_NODEID", "9"), ("SLURM_TASKS_PER_NODE", "2")]),
        Ok(2)
    );
    let e = local_size(&[("SLURM_NODEID", "0"), ("SLURM_TASKS_PER_NODE", "2(x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("SLURM_TASKS_PER_NODE=2(x"), "{e}");
}

#[test]
fn tasks_per_node_lists() {
    let on = |v, n| tasks_on_node("V", v, n).unwrap();
    assert_eq!(on("2(x3),1", 0), Some(2));
    assert_eq!(on("2(x3),1", 2), Some(2));
    assert_eq!(on("2(x3),1", 3), Some(1));
    assert_eq!(on("2(x3),1", 4), None);
    assert_eq!(on("7", 0), Some(7));
    assert!(tasks_on_node("V", "a", 0).is_err());
    assert!(tasks_on_node("V", "2(x3", 0).is_err());
}

#[test]
fn store_specs() {
    let rank = [("RANK", "0"), ("WORLD_SIZE", "2")];
    let store = |extra: &[(&'static str, &'static str)]| {
        let mut v = rank.to_vec();
        v.extend_from_slice(extra);
        parse(&v).map(|b| (b.store, b.master))
    };
    let (s, m) = store(&[("MASTER_ADDR", "node1")]).unwrap();
    assert_eq!(
        s,
        Some(StoreSpec::Tcp {
            host: "node1".into(),
            port: DEFAULT_MASTER_PORT
        })
    );
    assert_eq!(m.map(|m| m.port), Some(29_500));
    let (s, _) = store(&[("MASTER_ADDR", "[::1]"), ("MASTER_PORT", "7")]).unwrap();
    assert_eq!(
        s,
        Some(StoreSpec::Tcp {
            host: "::1".into(),
            port: 7
        })
    );
    let (s, m) = store(&[("TUTTI_STORE", "file:/shared/job"), ("MASTER_ADDR", "h")]).unwrap();
    assert_eq!(s, Some(StoreSpec::File("/shared/job".into())));
    assert!(m.is_some(), "MASTER_ADDR is still reported");
    let (s, _) = store(&[("TUTTI_STORE", "file:///x")]).unwrap();
    assert_eq!(s, Some(StoreSpec::File("/x".into())));
    let (s, _) = store(&[("TUTTI_STORE", "tcp://[fe80::1]:99")]).unwrap();
    assert_eq!(
        s,
        Some(StoreSpec::Tcp {
            host: "fe80::1".into(),
            port: 99
        })
    );
    assert_eq!(s.map(|s| s.to_string()), Some("tcp://[fe80::1]:99".into()));
    // A world of one needs no store.
    assert_eq!(
        parse(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap().store,
        None
    );
}

#[test]
fn timeouts_flags_and_blanks() {
    let b = parse(&[
        ("TUTTI_INIT_TIMEOUT", "2.5"),
        ("TUTTI_USE_AGENT_STORE", "1"),
        ("RANK", " "),
        ("MASTER_ADDR", ""),
    ])
    .unwrap();
    assert_eq!(b.init_timeout, Duration::from_millis(2_500));
    assert!(b.use_agent_store);
    assert_eq!(
        b.launcher,
        Launcher::Standalone,
        "blank RANK counts as unset"
    );
    let b = parse(&[]).unwrap();
    assert_eq!(b.init_timeout, DEFAULT_INIT_TIMEOUT);
    assert!(!b.use_agent_store && !b.serves_store());
}

#[test]
fn serves_store_only_on_rank_0_without_agent() {
    let mk = |rank: &'static str, agent: &'static str| {
        parse(&with_master(&[
            ("RANK", rank),
            ("WORLD_SIZE", "2"),
            ("TUTTI_USE_AGENT_STORE", agent),
        ]))
        .unwrap()
        .serves_store()
    };
    assert!(mk("0", "0"));
    assert!(!mk("1", "0"));
    assert!(!mk("0", "1"));
}

#[test]
fn errors_name_the_variable_and_value() {
    let r2 = [("RANK", "0"), ("WORLD_SIZE", "2")];
    let cases: Vec<(Env, &[&str])> = vec![
        (
            with_master(&[("RANK", "abc"), ("WORLD_SIZE", "2")]),
            &["RANK=abc is not a non-negative integer"],
        ),
        (
            with_master(&[("RANK", "-1"), ("WORLD_SIZE", "2")]),
            &["RANK=-1 is not a non-negative integer"],
        ),
        (
            with_master(&[("RANK", "0"), ("WORLD_SIZE", "0")]),
            &["WORLD_SIZE=0: a world needs at least one rank"],
        ),
        (
            with_master(&[("RANK", "4"), ("WORLD_SIZE", "4")]),
            &["RANK=4", "WORLD_SIZE=4", "0..=3"],
        ),
        (
            with_master(&[
                ("RANK", "1"),
                ("WORLD_SIZE", "4"),
                ("LOCAL_RANK", "2"),
                ("LOCAL_WORLD_SIZE", "2"),
            ]),
            &["LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"],
        ),
        (
            with_master(&[
                ("RANK", "1"),
                ("WORLD_SIZE", "4"),
                ("LOCAL_RANK", "0"),
                ("LOCAL_WORLD_SIZE", "8"),
            ]),
            &["LOCAL_WORLD_SIZE=8", "WORLD_SIZE=4"],
        ),
        (
            with_master(&[("RANK", "1")]),
            &["RANK=1 is set but WORLD_SIZE is not"],
        ),
        (
            with_master(&[("OMPI_COMM_WORLD_SIZE", "4")]),
            &["OMPI_COMM_WORLD_SIZE=4 is set but OMPI_COMM_WORLD_RANK is not"],
        ),
        (
            with_master(&[("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")]),
            &["LOCAL_RANK=1 is set but LOCAL_WORLD_SIZE is not"],
        ),
        (
            with_master(&[("PMI_RANK", "3"), ("PMI_SIZE", "2")]),
            &["PMI_RANK=3", "PMI_SIZE=2"],
        ),
        (
            vec![r2[0], r2[1], ("MASTER_ADDR", "h"), ("MASTER_PORT", "0")],
            &["MASTER_PORT=0 is not a valid TCP port"],
        ),
        (
            vec![r2[0], r2[1], ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")],
            &["MASTER_PORT=70000 is not a valid TCP port"],
        ),
        (
            vec![r2[0], r2[1], ("MASTER_PORT", "29500")],
            &["MASTER_PORT=29500 is set but MASTER_ADDR is not"],
        ),
        (
            vec![r2[0], r2[1], ("TUTTI_STORE", "s3://bucket")],
            &["TUTTI_STORE=s3://bucket", "unknown scheme 's3'"],
        ),
        (
            vec![r2[0], r2[1], ("TUTTI_STORE", "tcp://host")],
            &["TUTTI_STORE=tcp://host", "host:port"],
        ),
        (
            vec![r2[0], r2[1], ("TUTTI_STORE", "tcp://host:0")],
            &["TUTTI_STORE=tcp://host:0", "port '0'"],
        ),
        (
            vec![r2[0], r2[1], ("TUTTI_STORE", "file:")],
            &["TUTTI_STORE=file:", "directory"],
        ),
        (
            r2.to_vec(),
            &[
                "WORLD_SIZE=2 needs a rendezvous store",
                "MASTER_ADDR",
                "MASTER_PORT",
                "TUTTI_STORE",
            ],
        ),
        (
            vec![("SLURM_PROCID", "0"), ("SLURM_NTASKS", "3")],
            &["SLURM_NTASKS=3 needs a rendezvous store"],
        ),
        (
            vec![("TUTTI_INIT_TIMEOUT", "soon")],
            &["TUTTI_INIT_TIMEOUT=soon is not a positive number of seconds"],
        ),
        (
            vec![("TUTTI_INIT_TIMEOUT", "-1")],
            &["TUTTI_INIT_TIMEOUT=-1"],
        ),
        (
            vec![("TUTTI_INIT_TIMEOUT", "inf")],
            &["TUTTI_INIT_TIMEOUT=inf"],
        ),
        (
            vec![("TUTTI_INIT_TIMEOUT", "1e20")],
            &["TUTTI_INIT_TIMEOUT=1e20", "at most 1e9"],
        ),
        (
            vec![("TUTTI_INIT_TIMEOUT", "1e10")],
            &["TUTTI_INIT_TIMEOUT=1e10", "at most 1e9"],
        ),
        (
            vec![("TUTTI_SECRET", "short")],
            &["TUTTI_SECRET", "at least 16 bytes"],
        ),
        (
            vec![("TUTTI_JOB_ID", "job-7")],
            &["TUTTI_JOB_ID=job-7", "64-bit number"],
        ),
        (
            vec![("TUTTI_BIND_ADDR", "eth0")],
            &["TUTTI_BIND_ADDR=eth0", "not an IP address"],
        ),
        (
            vec![("TUTTI_USE_AGENT_STORE", "maybe")],
            &["TUTTI_USE_AGENT_STORE=maybe is not a flag"],
        ),
        (vec![("TUTTI_LAUNCHER", "1")], &["TUTTI_LAUNCHER=1", "RANK"]),
        (
            with_master(&[
                ("PMI_RANK", "0"),
                ("PMI_SIZE", "2"),
                ("TUTTI_LAUNCHER", "1"),
            ]),
            &["TUTTI_LAUNCHER=1", "RANK"],
        ),
    ];
    for (vars, wanted) in cases {
        let msg = message(&vars);
        for w in wanted {
            assert!(msg.contains(w), "{vars:?}: message {msg:?} lacks {w:?}");
        }
    }
}

#[test]
fn secret_and_job_id() {
    let b = Bootstrap::from_vars(|k| match k {
        "TUTTI_SECRET" => Some("0123456789abcdef0123".into()),
        "TUTTI_JOB_ID" => Some("0x2a".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(b.job_id, 42);
    assert_eq!(
        b.secret,
        Some(crate::auth::Secret::new(b"0123456789abcdef0123".to_vec()).unwrap())
    );
    let b = Bootstrap::from_vars(|_| None).unwrap();
    assert_eq!((b.secret, b.job_id), (None, 0));
}

#[test]
fn durations_are_bounded() {
    assert_eq!(parse_secs("2.5"), Some(Duration::from_millis(2500)));
    assert_eq!(
        parse_secs(" 1e9 "),
        Some(Duration::from_secs(1_000_000_000))
    );
    for bad in ["1e20", "1e10", "0", "-1", "nan", "inf", "", "x", "1e400"] {
        assert_eq!(parse_secs(bad), None, "{bad}");
    }
}

#[test]
fn the_bind_address_of_a_file_store_world_is_parsed_once_here() {
    let b = parse(&[("TUTTI_BIND_ADDR", " 10.77.0.2 ")]).unwrap();
    assert_eq!(b.bind_addr, Some("10.77.0.2".parse().unwrap()));
    assert_eq!(parse(&[]).unwrap().bind_addr, None);
}
