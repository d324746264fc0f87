//! `tutti trace DIR`: merges the flight-recorder dumps of all ranks (`tutti::trace`, one
//! `tutti-trace-rank{R}-pid{P}.json` per rank and process) and says, per communicator, where
//! each rank is, which ranks are behind and on which op, and which failed and why.
//!
//! A rank is *behind* on a communicator when it has not started the latest collective that
//! another rank started (its last sequence number is lower), or when it is still in a
//! collective that another rank has finished; a rank with no file is named as missing (dead,
//! stopped, or it did not dump). Only files named as dumps are read; a file that cannot be read
//! or parsed is named and skipped. Where a rank has files from several processes (a restart),
//! the newest dump is used and the others are named; files of another job than the newest
//! dump's (`TUTTI_JOB_ID`, `SLURM_JOB_ID` or `TORCHELASTIC_RUN_ID`, in a shared directory) are
//! named and left out, and a dump much older than the newest is called out.
//!
//! Cost: reads every file once; the merge is linear in the records.

use clap::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tutti::trace::{CommTrace, OpRecord, TraceFile};

/// Options of `tutti trace`.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The directory the ranks dumped into (default: `TUTTI_TRACE_DIR`, else the library's
    /// default, `$TMPDIR/tutti-trace-UID`).
    dir: Option<PathBuf>,
    /// Also list each rank's last N calls per communicator.
    #[arg(long, default_value_t = 0)]
    last: usize,
}

/// Reads, merges and prints; exit 0 when at least one dump was read.
pub fn run(args: TraceArgs) -> ExitCode {
    let dir = args.dir.unwrap_or_else(|| {
        std::env::var_os("TUTTI_TRACE_DIR")
            .filter(|d| !d.is_empty() && d != "off")
            .map_or_else(tutti::trace::default_dir, PathBuf::from)
    });
    match load(&dir) {
        Ok(dumps) => {
            print!("{}", report(&dumps, args.last));
            if dumps.files.is_empty() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("tutti trace: {e}");
            ExitCode::from(2)
        }
    }
}

/// The dumps of one directory.
#[derive(Debug, Default)]
pub struct Dumps {
    /// The newest dump of each world rank.
    pub files: BTreeMap<usize, (PathBuf, TraceFile)>,
    /// Older dumps of a rank (another process), not used.
    pub superseded: Vec<PathBuf>,
    /// Files that could not be read or parsed, and why.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Dumps of another job than the newest dump's, not used.
    pub other_jobs: Vec<(PathBuf, String)>,
}

/// A dump older than the newest by more than this is called out (an earlier hang's?).
const STALE_NS: u64 = 60_000_000_000;

/// Whether `name` is a dump's file name.
fn is_dump(name: &str) -> bool {
    name.starts_with("tutti-trace-rank") && name.ends_with(".json")
}

/// Reads every dump in `dir`.
pub fn load(dir: &Path) -> Result<Dumps, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_dump))
        .collect();
    paths.sort();
    let mut dumps = Dumps::default();
    let mut files = Vec::new();
    for path in paths {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<TraceFile>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(f) => files.push((path, f)),
            Err(e) => dumps.unreadable.push((path, e)),
        }
    }
    // The job of the newest dump that names one is the one asked about; other jobs' files are
    // named and left out (dumps without a job are kept).
    let job = files
        .iter()
        .filter(|(_, f)| f.job.is_some())
        .max_by_key(|(_, f)| f.time_ns)
        .and_then(|(_, f)| f.job.clone());
    for (path, f) in files {
        match (&job, &f.job) {
            (Some(j), Some(k)) if j != k => dumps.other_jobs.push((path, k.clone())),
            _ => dumps.add(path, f),
        }
    }
    Ok(dumps)
}

impl Dumps {
    /// Keeps `f` if it is the newest dump of its rank.
    pub fn add(&mut self, path: PathBuf, f: TraceFile) {
        match self.files.get(&f.rank) {
            Some((_, old)) if old.time_ns >= f.time_ns => self.superseded.push(path),
            _ => {
                if let Some((old, _)) = self.files.insert(f.rank, (path, f)) {
                    self.superseded.push(old);
                }
            }
        }
    }

    /// The world size the dumps agree on (the largest they name).
    fn world_size(&self) -> usize {
        self.files
            .values()
            .map(|(_, f)| f.world_size)
            .max()
            .unwrap_or(0)
    }

    /// The world ranks without a dump.
    fn missing(&self) -> Vec<usize> {
        (0..self.world_size())
            .filter(|r| !self.files.contains_key(r))
            .collect()
    }

    /// Every communicator seen, by id, with its members (world ranks).
    fn communicators(&self) -> BTreeMap<u64, Vec<usize>> {
        let mut comms = BTreeMap::new();
        for (_, f) in self.files.values() {
            for c in &f.communicators {
                comms
                    .entry(c.comm_id)
                    .or_insert_with(|| c.world_ranks.clone());
            }
        }
        comms
    }

    fn ring(&self, world_rank: usize, comm_id: u64) -> Option<(&TraceFile, &CommTrace)> {
        let (_, f) = self.files.get(&world_rank)?;
        let c = f.communicators.iter().find(|c| c.comm_id == comm_id)?;
        Some((f, c))
    }
}

/// Where one rank is in one communicator's sequence of collectives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// No file for this rank.
    NoFile,
    /// A file, but no call recorded on this communicator.
    NoCalls,
    /// Its last collective: sequence number, name, state.
    At { seq: u64, op: String, state: String },
    /// Calls, but no collective among those kept.
    OnlyP2p,
}

fn place(dumps: &Dumps, world_rank: usize, comm_id: u64) -> Place {
    if !dumps.files.contains_key(&world_rank) {
        return Place::NoFile;
    }
    let Some((_, c)) = dumps.ring(world_rank, comm_id) else {
        return Place::NoCalls;
    };
    match c.ops.iter().rev().find(|o| o.seq > 0) {
        Some(o) => Place::At {
            seq: o.seq,
            op: o.op.clone(),
            state: o.state.clone(),
        },
        None if c.ops.is_empty() => Place::NoCalls,
        None => Place::OnlyP2p,
    }
}

/// The whole report: a summary, then per communicator each rank's last call and a verdict.
pub fn report(dumps: &Dumps, last: usize) -> String {
    let mut out = String::new();
    let n = dumps.world_size();
    let _ = writeln!(
        out,
        "{} dump(s) of a world of {n} rank(s){}",
        dumps.files.len(),
        if dumps.files.is_empty() {
            " (no readable dump)"
        } else {
            ""
        }
    );
    for (path, why) in &dumps.unreadable {
        let _ = writeln!(out, "unreadable, skipped: {}: {why}", path.display());
    }
    for path in &dumps.superseded {
        let _ = writeln!(out, "older dump, ignored: {}", path.display());
    }
    for (path, job) in &dumps.other_jobs {
        let _ = writeln!(
            out,
            "dump of another job ({job}), ignored: {}",
            path.display()
        );
    }
    let newest = dumps
        .files
        .values()
        .map(|(_, f)| f.time_ns)
        .max()
        .unwrap_or(0);
    for (rank, (_, f)) in &dumps.files {
        let age = newest.saturating_sub(f.time_ns);
        let stale = if age > STALE_NS {
            format!(" ({} before the newest dump: an earlier one?)", secs(age))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "rank {rank}: host {}, pid {}, dumped on {}{stale}",
            f.host, f.pid, f.reason
        );
    }
    let missing = dumps.missing();
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "no dump from {} (dead, stopped, or it never dumped)",
            rank_list(&missing)
        );
    }
    for (id, members) in dumps.communicators() {
        out.push('\n');
        comm_report(&mut out, dumps, id, &members, last);
    }
    out
}

fn comm_report(out: &mut String, dumps: &Dumps, id: u64, members: &[usize], last: usize) {
    let name = if id == 0 {
        "the world".to_string()
    } else {
        format!("communicator {id:#x}")
    };
    let _ = writeln!(out, "{name} ({} ranks):", members.len());
    for (r, &w) in members.iter().enumerate() {
        let _ = writeln!(out, "  {}", rank_line(dumps, r, w, id));
        if let Some((_, c)) = dumps.ring(w, id) {
            let skip = c.ops.len().saturating_sub(last);
            for o in c.ops.iter().skip(skip) {
                let _ = writeln!(out, "      {}", describe(o, None));
            }
        }
    }
    for line in verdict(dumps, id, members) {
        let _ = writeln!(out, "  => {line}");
    }
}

/// `rank 2 (world rank 5): all_reduce #42 f32 x1024 (4096 B) ring: started 3.2 s before the dump`.
fn rank_line(dumps: &Dumps, r: usize, w: usize, id: u64) -> String {
    let who = if id == 0 {
        format!("rank {r}")
    } else {
        format!("rank {r} (world rank {w})")
    };
    match dumps.ring(w, id) {
        _ if !dumps.files.contains_key(&w) => format!("{who}: no dump"),
        None => format!("{who}: no call recorded on this communicator"),
        Some((f, c)) => match c.ops.last() {
            None => format!("{who}: no call yet"),
            Some(o) => format!(
                "{who}: {} (call {} of {})",
                describe(o, Some(f.time_ns)),
                o.call,
                c.calls
            ),
        },
    }
}

/// One call in words.
fn describe(o: &OpRecord, dumped_ns: Option<u64>) -> String {
    let mut s = o.op.clone();
    if o.seq > 0 {
        let _ = write!(s, " #{}", o.seq);
    }
    if let Some(d) = &o.dtype {
        let _ = write!(s, " {d} x{} ({} B)", o.count, o.bytes);
    }
    if let Some(p) = o.peer {
        let role = if o.seq > 0 { "root" } else { "peer" };
        let _ = write!(s, " {role} {p}");
    }
    if let Some(a) = &o.algorithm {
        let _ = write!(s, " {a}");
    }
    let _ = write!(s, ": {}", o.state);
    match (o.end_ns, dumped_ns) {
        (Some(end), _) => {
            let _ = write!(s, " in {}", secs(end.saturating_sub(o.start_ns)));
        }
        (None, Some(at)) => {
            let _ = write!(
                s,
                " {} before the dump",
                secs(at.saturating_sub(o.start_ns))
            );
        }
        (None, None) => {}
    }
    if let Some(e) = &o.error {
        let _ = write!(s, " ({e})");
    }
    s
}

fn secs(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s < 1e-3 {
        format!("{:.1} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.1} s")
    }
}

/// Who is behind on communicator `id`, on which op, and who failed.
fn verdict(dumps: &Dumps, id: u64, members: &[usize]) -> Vec<String> {
    let places: Vec<(usize, Place)> = members
        .iter()
        .enumerate()
        .map(|(r, &w)| (r, place(dumps, w, id)))
        .collect();
    let mut lines = Vec::new();
    let front = places
        .iter()
        .filter_map(|(r, p)| match p {
            Place::At { seq, op, state } => Some((*seq, op.clone(), state.clone(), *r)),
            _ => None,
        })
        .max_by_key(|(seq, ..)| *seq);
    let no_file: Vec<usize> = pick(&places, |p| *p == Place::NoFile);
    if let Some((top, op, ..)) = &front {
        let at_top = |p: &Place| matches!(p, Place::At { seq, .. } if seq == top);
        let reached: Vec<usize> = pick(&places, at_top);
        let lower: Vec<usize> = pick(&places, |p| {
            matches!(p, Place::At { seq, .. } if seq < top)
                || matches!(p, Place::NoCalls | Place::OnlyP2p)
        });
        let finished = places.iter().any(
            |(_, p)| matches!(p, Place::At { seq, state, .. } if seq == top && state == "done"),
        );
        let stuck: Vec<usize> = if finished {
            pick(
                &places,
                |p| matches!(p, Place::At { seq, state, .. } if seq == top && state == "started"),
            )
        } else {
            Vec::new()
        };
        for r in &lower {
            let (_, p) = &places[*r];
            let last = match p {
                Place::At { seq, op, state } => {
                    format!("its last collective is {op} #{seq} ({state})")
                }
                _ => "no collective recorded".to_string(),
            };
            lines.push(format!(
                "rank {r} is BEHIND: it has not started {op} #{top}, which {} started; {last}",
                rank_list(&reached)
            ));
        }
        for r in &stuck {
            lines.push(format!(
                "rank {r} is BEHIND: still in {op} #{top}, which other ranks finished"
            ));
        }
        for r in &no_file {
            lines.push(format!(
                "rank {r} has NO DUMP (dead, stopped, or it never dumped): probably behind; {} reached {op} #{top}",
                rank_list(&reached)
            ));
        }
        if lower.is_empty() && stuck.is_empty() && no_file.is_empty() {
            let all_started = places
                .iter()
                .all(|(_, p)| matches!(p, Place::At { state, .. } if state == "started"));
            lines.push(if all_started {
                format!("no rank is behind: all are in {op} #{top}, waiting (for a link or a rank outside the dumps?)")
            } else {
                format!("no rank is behind: all reached {op} #{top}")
            });
        }
    } else {
        for r in &no_file {
            lines.push(format!(
                "rank {r} has NO DUMP (dead, stopped, or it never dumped)"
            ));
        }
        if no_file.len() < places.len() {
            lines.push("no collective recorded on this communicator".to_string());
        }
    }
    lines.extend(failures(dumps, id, members));
    lines
}

/// The ranks (of the communicator) whose place satisfies `f`.
fn pick(places: &[(usize, Place)], f: impl Fn(&Place) -> bool) -> Vec<usize> {
    places
        .iter()
        .filter(|(_, p)| f(p))
        .map(|(r, _)| *r)
        .collect()
}

/// `rank 3 FAILED in all_reduce #42: <error>` for each rank whose latest failed call is in its
/// ring (the latest failure per rank).
fn failures(dumps: &Dumps, id: u64, members: &[usize]) -> Vec<String> {
    let mut lines = Vec::new();
    for (r, &w) in members.iter().enumerate() {
        let Some((_, c)) = dumps.ring(w, id) else {
            continue;
        };
        if let Some(o) = c.ops.iter().rev().find(|o| o.state == "failed") {
            let seq = if o.seq > 0 {
                format!(" #{}", o.seq)
            } else {
                String::new()
            };
            lines.push(format!(
                "rank {r} FAILED in {}{seq}: {}",
                o.op,
                o.error.as_deref().unwrap_or("(no error text)")
            ));
        }
    }
    lines
}

/// `rank 1`, `ranks 0, 2`.
fn rank_list(ranks: &[usize]) -> String {
    let set: BTreeSet<_> = ranks.iter().collect();
    let names: Vec<String> = set.iter().map(|r| r.to_string()).collect();
    match names.len() {
        0 => "no rank".into(),
        1 => format!("rank {}", names[0]),
        _ => format!("ranks {}", names.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti::trace::{CommTrace, FORMAT_VERSION};

    fn op(call: u64, seq: u64, state: &str) -> OpRecord {
        OpRecord {
            call,
            op: "all_reduce".into(),
            seq,
            dtype: Some("f32".into()),
            count: 4,
            bytes: 16,
            peer: None,
            algorithm: Some("ring".into()),
            state: state.into(),
            error: (state == "failed").then(|| format!("all_reduce #{seq} on rank x: boom")),
            start_ns: 1_000 * call,
            end_ns: (state != "started").then_some(1_000 * call + 500),
        }
    }

    fn file(rank: usize, n: usize, ops: Vec<OpRecord>) -> TraceFile {
        TraceFile {
            version: FORMAT_VERSION,
            rank,
            world_size: n,
            host: "h".into(),
            pid: 100 + rank as u32,
            job: Some("0x1".into()),
            reason: "signal SIGUSR2".into(),
            time_ns: 1_000_000,
            communicators: vec![CommTrace {
                comm_id: 0,
                rank,
                size: n,
                world_ranks: (0..n).collect(),
                calls: ops.len() as u64,
                ops,
            }],
        }
    }

    fn dumps(files: Vec<TraceFile>) -> Dumps {
        let mut d = Dumps::default();
        for f in files {
            d.add(format!("f{}", f.rank).into(), f);
        }
        d
    }

    #[test]
    fn a_rank_that_never_started_the_latest_collective_is_behind() {
        let d = dumps(vec![
            file(0, 3, vec![op(1, 1, "done"), op(2, 2, "started")]),
            file(1, 3, vec![op(1, 1, "done")]),
            file(2, 3, vec![op(1, 1, "done"), op(2, 2, "started")]),
        ]);
        let v = verdict(&d, 0, &[0, 1, 2]);
        assert_eq!(
            v,
            [
                "rank 1 is BEHIND: it has not started all_reduce #2, which ranks 0, 2 started; \
              its last collective is all_reduce #1 (done)"
            ]
        );
    }

    #[test]
    fn a_rank_still_in_a_collective_the_others_finished_is_behind() {
        let d = dumps(vec![
            file(0, 2, vec![op(1, 1, "done"), op(2, 2, "done")]),
            file(1, 2, vec![op(1, 1, "done"), op(2, 2, "started")]),
        ]);
        let v = verdict(&d, 0, &[0, 1]);
        assert_eq!(
            v,
            ["rank 1 is BEHIND: still in all_reduce #2, which other ranks finished"]
        );
    }

    #[test]
    fn missing_ranks_failures_and_a_whole_world_waiting_are_named() {
        let d = dumps(vec![
            file(0, 3, vec![op(1, 1, "done"), op(2, 2, "failed")]),
            file(2, 3, vec![op(1, 1, "done"), op(2, 2, "started")]),
        ]);
        let v = verdict(&d, 0, &[0, 1, 2]);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].starts_with("rank 1 has NO DUMP")
                && v[0].contains("ranks 0, 2 reached all_reduce #2"),
            "{v:?}"
        );
        assert_eq!(
            v[1],
            "rank 0 FAILED in all_reduce #2: all_reduce #2 on rank x: boom"
        );
        let text = report(&d, 0);
        assert!(text.contains("no dump from rank 1"), "{text}");
        assert!(text.contains("  rank 1: no dump"), "{text}");

        let d = dumps(vec![
            file(0, 2, vec![op(1, 1, "started")]),
            file(1, 2, vec![op(1, 1, "started")]),
        ]);
        let v = verdict(&d, 0, &[0, 1]);
        assert!(
            v[0].starts_with("no rank is behind: all are in all_reduce #1, waiting"),
            "{v:?}"
        );
    }

    #[test]
    fn the_newest_dump_of_a_rank_wins_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("tutti-trace-cli-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut old = file(0, 1, vec![op(1, 1, "done")]);
        old.time_ns = 5;
        old.pid = 1;
        tutti::trace::write_file(&dir, &old).unwrap();
        tutti::trace::write_file(&dir, &file(0, 1, vec![op(1, 1, "done"), op(2, 2, "done")]))
            .unwrap();
        std::fs::write(dir.join("tutti-trace-rank9-pid9.json"), "{ not json").unwrap();
        let mut other = file(1, 1, vec![op(1, 1, "done")]);
        other.job = Some("0x2".into());
        other.time_ns = 7;
        tutti::trace::write_file(&dir, &other).unwrap();
        let mut two = file(2, 3, vec![op(1, 1, "done")]);
        two.job = None; // a dump without a job is kept
        tutti::trace::write_file(&dir, &two).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a dump").unwrap();
        let d = load(&dir).unwrap();
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.files[&0].1.pid, 100);
        assert_eq!(d.other_jobs.len(), 1);
        assert_eq!(d.other_jobs[0].1, "0x2");
        assert_eq!(d.superseded, [dir.join("tutti-trace-rank0-pid1.json")]);
        assert_eq!(d.unreadable.len(), 1);
        let text = report(&d, 1);
        assert!(
            text.contains("unreadable, skipped: ") && text.contains("rank9-pid9"),
            "{text}"
        );
        assert!(text.contains("older dump, ignored"), "{text}");
        assert!(
            text.contains("dump of another job (0x2), ignored"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dump_much_older_than_the_others_is_called_out() {
        let mut old = file(0, 2, vec![op(1, 1, "done")]);
        old.time_ns = 1_000_000_000;
        let mut new = file(1, 2, vec![op(1, 1, "done")]);
        new.time_ns = 100_000_000_000;
        let text = report(&dumps(vec![old, new]), 0);
        assert!(
            text.contains("rank 0: host h, pid 100, dumped on signal SIGUSR2 (99.0 s before the newest dump: an earlier one?)"),
            "{text}"
        );
        assert!(
            !text.contains("pid 101, dumped on signal SIGUSR2 ("),
            "{text}"
        );
    }
}
