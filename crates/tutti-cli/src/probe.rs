//! `tutti probe`: the latency, jitter and bandwidth of every pair of ranks, measured one pair at
//! a time, with the bottleneck link and any slow rank named. Run it on every rank:
//!
//! ```text
//! tutti launch -n 4 -- tutti probe [--pings 1000] [--bw-size 4M --bw-count 4 --bw-rounds 5]
//!                                  [--budget 5] [--out FILE] [--json]
//! ```
//!
//! # What is measured
//! The pairs `(a, b)`, `a < b`, take turns in a fixed order; before each pair every rank enters
//! a barrier, so only the two ranks of the pair move data while it is measured and the others
//! wait in the next barrier.
//! - **Latency**: `a` sends `--lat-size` bytes (default 8) to `b`, which sends them back; after
//!   `--warmup` untimed round trips, up to `--pings` are timed one by one on `a`. The matrix
//!   shows the **one-way latency = round trip / 2**, its p50 and p99 (nearest rank) over the
//!   round trips; it is symmetric, one ping-pong per pair.
//! - **Jitter**: p99 - p50 of the same one-way times.
//! - **Bandwidth**, each way: the sender sends `--bw-count` messages of `--bw-size` bytes back to
//!   back and the receiver answers the last with a 1-byte ack; a round is timed on the sender
//!   from its first send until the ack arrives, so it includes one one-way latency (under 1% of
//!   a round at the defaults on loopback). One untimed round of a single message comes first
//!   (connection warm-up, page faults); the matrix shows the median of up to `--bw-rounds`
//!   timed rounds, in Gbit/s (1e9 bits), row = sender, column = receiver.
//!
//! All traffic is the communicator's point-to-point `send`/`recv` with tags of its own, so it
//! crosses the links a collective would (shared memory within a host, TCP between hosts), and
//! every wait is bounded by the communicator's timeout (`TUTTI_TIMEOUT`).
//!
//! # Budget
//! `--budget SECS` (default 5) bounds the measuring: each pair gets an equal share, a quarter of
//! it for the ping-pong and three eighths for each direction's bandwidth. A loop that reaches
//! its share stops early, after at least 10 timed round trips and one timed bandwidth round.
//! Where the warm-up message shows that `--bw-count` messages would not fit in the share, a
//! round has fewer messages (as many as fit, at least one). So the budget scales down counts,
//! never sizes, and a large `--bw-size` over a slow link can still overrun it (by about two
//! messages per direction). The timing side decides and tells its peer in-band (a flag in the
//! ping, a count before each bandwidth round), so the two never disagree. The header says how
//! many counts were scaled down. Barriers, the final gather and the start-up are outside the
//! budget.
//!
//! Every rank takes rank 0's settings (broadcast at the start), so ranks started with different
//! flags still agree.
//!
//! # Verdicts
//! - **Bottleneck link**: the direction with the least bandwidth over all ordered pairs.
//! - **Slow rank** (3 ranks or more): a rank *all* of whose directions (to and from it) are
//!   under half the median bandwidth of the directions between the other ranks; for latency,
//!   a rank all of whose pairs have a p50 over twice the median p50 of the pairs between the
//!   others. With 2 ranks there is one link and nothing to compare it with.
//!
//! # The model file (`--out FILE`)
//! Rank 0 writes a [`Tuning`] (`tutti model --from FILE` reads it) that prices the worst link,
//! since a collective's critical path crosses it: `alpha_s` = the largest one-way p50 latency
//! of any pair, `beta_s_per_byte` = 1 / the least bandwidth of any direction (in bytes/s), and
//! the reduction speeds of rank 0's CPU ([`tutti::tune::measure_gammas`]; the f32 sum is the
//! default `gamma_s_per_byte`). The matrices follow the header as comment lines.
//!
//! # Output
//! Rank 0 prints the three matrices and the verdicts (or with `--json` one JSON object); the
//! other ranks print nothing but errors.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use tutti::Communicator;
use tutti_core::model::{Model, Tuning};
use tutti_core::DType;

use crate::bench::{links_line, parse_size, percentile};

/// Options of `tutti probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Timed round trips per pair (fewer if the budget runs out; at least 10).
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(MIN_PINGS..))]
    pings: u64,
    /// Untimed round trips per pair before the timed ones.
    #[arg(long, value_name = "N", default_value_t = 10)]
    warmup: u64,
    /// Bytes of a ping (suffixes K, M: powers of 1024; at least 1).
    #[arg(long, value_name = "BYTES", default_value = "8", value_parser = parse_positive_size)]
    lat_size: usize,
    /// Bytes of each bandwidth message.
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_positive_size)]
    bw_size: usize,
    /// Messages per bandwidth round, sent back to back before the ack (fewer if the budget
    /// is short; at least 1).
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BW_COUNT))]
    bw_count: u64,
    /// Timed bandwidth rounds per direction (fewer if the budget runs out; at least 1).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    bw_rounds: u64,
    /// Seconds of measuring in all, shared equally by the pairs; counts shrink to fit.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_budget)]
    budget: f64,
    /// Write the measured model to FILE (rank 0), for `tutti model --from FILE`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print one JSON object (rank 0) instead of the matrices.
    #[arg(long)]
    json: bool,
}

/// The fewest timed round trips per pair, whatever the budget.
const MIN_PINGS: u64 = 10;
/// The most messages a bandwidth round may announce (a bound on what a receiver accepts).
const MAX_BW_COUNT: u64 = 1 << 16;

// Tags of the probe's messages (point-to-point lane; collectives do not see them).
const TAG_PING: u32 = 0x7072_0001;
const TAG_PONG: u32 = 0x7072_0002;
const TAG_ROUND: u32 = 0x7072_0003;
const TAG_DATA: u32 = 0x7072_0004;
const TAG_ACK: u32 = 0x7072_0005;

/// A size of at least one byte.
fn parse_positive_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err("must be at least one byte".to_string()),
        n => Ok(n),
    }
}

/// A positive, finite number of seconds, at most a day.
fn parse_budget(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 86_400.0 => Ok(x),
        _ => Err(format!("{s:?} is not a number of seconds like 5 or 0.5")),
    }
}

/// Runs the probe; rank 0 prints.
pub fn run(args: ProbeArgs) -> ExitCode {
    match probe(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tutti probe: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

/// The settings every rank uses: rank 0's.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Settings {
    pings: u64,
    warmup: u64,
    lat_size: usize,
    bw_size: usize,
    bw_count: u64,
    bw_rounds: u64,
    budget: f64,
}

impl Settings {
    fn of(a: &ProbeArgs) -> Settings {
        Settings {
            pings: a.pings,
            warmup: a.warmup,
            lat_size: a.lat_size,
            bw_size: a.bw_size,
            bw_count: a.bw_count,
            bw_rounds: a.bw_rounds,
            budget: a.budget,
        }
    }

    fn to_words(self) -> [u64; 7] {
        [
            self.pings,
            self.warmup,
            self.lat_size as u64,
            self.bw_size as u64,
            self.bw_count,
            self.bw_rounds,
            self.budget.to_bits(),
        ]
    }

    fn from_words(w: [u64; 7]) -> Result<Settings, String> {
        let size = |x: u64| usize::try_from(x).map_err(|_| format!("size {x} does not fit"));
        let s = Settings {
            pings: w[0].max(MIN_PINGS),
            warmup: w[1],
            lat_size: size(w[2])?.max(1),
            bw_size: size(w[3])?.max(1),
            bw_count: w[4].clamp(1, MAX_BW_COUNT),
            bw_rounds: w[5].max(1),
            budget: f64::from_bits(w[6]),
        };
        if !(s.budget.is_finite() && s.budget > 0.0) {
            return Err(format!("rank 0 sent a budget of {}", s.budget));
        }
        Ok(s)
    }
}

/// Fields of one rank's record of one peer (seconds, bytes/s, counts); NaN where not measured.
const F_RTT_P50: usize = 0;
const F_RTT_P99: usize = 1;
const F_PINGS: usize = 2;
const F_BW: usize = 3;
const F_ROUNDS: usize = 4;
const F_MSGS: usize = 5;
const FIELDS: usize = 6;

fn probe(args: &ProbeArgs) -> Result<(), BoxError> {
    let comm = Communicator::from_env()?;
    let n = comm.size();
    if n < 2 {
        return Err("needs 2 ranks or more (run it under tutti launch -n N)".into());
    }
    let mut words = Settings::of(args).to_words();
    comm.broadcast(&mut words, 0)?;
    let set = Settings::from_words(words)?;
    // Now, while every link is up: the other ranks close theirs once the results are gathered.
    let links = links_line(&comm);
    let me = comm.rank();
    let pairs = n * (n - 1) / 2;
    let share = Duration::from_secs_f64(set.budget / pairs as f64);
    let mut mine = vec![f64::NAN; n * FIELDS];
    let mut lat_buf = vec![0u8; set.lat_size];
    let mut bw_buf: Vec<u8> = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            comm.barrier()?;
            if me != a && me != b {
                continue;
            }
            if bw_buf.is_empty() {
                bw_buf = vec![0x5a; set.bw_size];
            }
            let peer = if me == a { b } else { a };
            let rec = &mut mine[peer * FIELDS..(peer + 1) * FIELDS];
            if me == a {
                let mut rtts = ping(&comm, b, &set, share.mul_f64(0.25), &mut lat_buf)?;
                rtts.sort_by(f64::total_cmp);
                rec[F_RTT_P50] = percentile(&rtts, 50.0);
                rec[F_RTT_P99] = percentile(&rtts, 99.0);
                rec[F_PINGS] = rtts.len() as f64;
            } else {
                pong(&comm, a, &mut lat_buf)?;
            }
            // a sends first, then b.
            for sender in [a, b] {
                if me == sender {
                    let (mut rates, msgs) =
                        stream(&comm, peer, &set, share.mul_f64(0.375), &mut bw_buf)?;
                    rates.sort_by(f64::total_cmp);
                    rec[F_BW] = median(&rates);
                    rec[F_ROUNDS] = rates.len() as f64;
                    rec[F_MSGS] = msgs as f64;
                } else {
                    sink(&comm, peer, &mut bw_buf)?;
                }
            }
        }
    }
    let mut all = if me == 0 {
        vec![0f64; n * n * FIELDS]
    } else {
        Vec::new()
    };
    comm.gather(&mine, (me == 0).then_some(&mut all[..]), 0)?;
    if me != 0 {
        return Ok(());
    }
    let m = Matrix::from_records(n, &all);
    let report = Report::of(&m);
    let header = header(&set, n, &m);
    let text = if args.json {
        format!("{}\n", json(&set, &m, &report)?)
    } else {
        format!("{header}\n{links}\n{}", render(&m, &report))
    };
    // A closed pipe is an error to report, not a panic.
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot print the results: {e}"))?;
    if let Some(path) = &args.out {
        let tuning = tuning(&m)?;
        let mut comments = vec![
            format!("written by {}", header.trim_start_matches("# ")),
            "alpha_s: the largest one-way p50 latency of any pair (round trip / 2)".to_string(),
            "beta_s_per_byte: 1 / the least bandwidth of any direction (the bottleneck link)"
                .to_string(),
            "gamma: rank 0's reduction kernels (f32 sum the default), tutti::tune".to_string(),
        ];
        comments.extend(render(&m, &report).lines().map(str::to_string));
        std::fs::write(path, tuning.to_text(&comments))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Round trips to `peer` as the timing side: warm-up, then up to `set.pings` timed ones (at
/// least [`MIN_PINGS`], fewer once `share` is spent); then a stop. Returns the round trips.
fn ping(
    comm: &Communicator,
    peer: usize,
    set: &Settings,
    share: Duration,
    buf: &mut [u8],
) -> tutti::Result<Vec<f64>> {
    for _ in 0..set.warmup {
        buf[0] = 1;
        comm.send(buf, peer, TAG_PING)?;
        comm.recv(buf, peer, TAG_PONG)?;
    }
    let mut rtts = Vec::new();
    let start = Instant::now();
    while (rtts.len() as u64) < set.pings
        && ((rtts.len() as u64) < MIN_PINGS || start.elapsed() < share)
    {
        buf[0] = 1;
        let t = Instant::now();
        comm.send(buf, peer, TAG_PING)?;
        comm.recv(buf, peer, TAG_PONG)?;
        rtts.push(t.elapsed().as_secs_f64());
    }
    buf[0] = 0;
    comm.send(buf, peer, TAG_PING)?;
    Ok(rtts)
}

/// The other side of [`ping`]: echoes every ping until the stop.
fn pong(comm: &Communicator, peer: usize, buf: &mut [u8]) -> tutti::Result<()> {
    loop {
        comm.recv(buf, peer, TAG_PING)?;
        if buf[0] == 0 {
            return Ok(());
        }
        comm.send(buf, peer, TAG_PONG)?;
    }
}

/// Bandwidth rounds to `peer` as the sender: one untimed round of one message, then up to
/// `set.bw_rounds` timed rounds (at least one, fewer once `share` is spent) of `set.bw_count`
/// messages, or of as many as the warm-up says fit in `share` (at least one); then a stop.
/// Returns each timed round's rate in bytes per second, and the messages per round.
fn stream(
    comm: &Communicator,
    peer: usize,
    set: &Settings,
    share: Duration,
    buf: &mut [u8],
) -> tutti::Result<(Vec<f64>, u64)> {
    let round = |count: u64, buf: &mut [u8]| -> tutti::Result<f64> {
        comm.send(&[count], peer, TAG_ROUND)?;
        let t = Instant::now();
        for _ in 0..count {
            comm.send(buf, peer, TAG_DATA)?;
        }
        comm.recv(&mut [0u8; 1], peer, TAG_ACK)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let warm = round(1, buf)?;
    let count = messages_that_fit(set.bw_count, warm, share);
    let mut rates = Vec::new();
    let start = Instant::now();
    while (rates.len() as u64) < set.bw_rounds && (rates.is_empty() || start.elapsed() < share) {
        let secs = round(count, buf)?;
        rates.push((count as f64 * buf.len() as f64) / secs.max(1e-9));
    }
    comm.send(&[0u64], peer, TAG_ROUND)?;
    Ok((rates, count))
}

/// Messages per round: `wanted`, or as many messages of `per_message` seconds as fit in
/// `share`, at least one.
fn messages_that_fit(wanted: u64, per_message: f64, share: Duration) -> u64 {
    let fit = share.as_secs_f64() / per_message.max(1e-9);
    // Compared as floats: `fit` may exceed any u64.
    if fit >= wanted as f64 {
        wanted
    } else {
        (fit as u64).max(1)
    }
}

/// The other side of [`stream`]: receives each announced round and acks it, until the stop.
fn sink(comm: &Communicator, peer: usize, buf: &mut [u8]) -> tutti::Result<()> {
    loop {
        let mut count = [0u64];
        comm.recv(&mut count, peer, TAG_ROUND)?;
        // The count comes from the peer: bounded, so a bad one cannot keep this rank forever.
        let count = count[0].min(MAX_BW_COUNT);
        if count == 0 {
            return Ok(());
        }
        for _ in 0..count {
            comm.recv(buf, peer, TAG_DATA)?;
        }
        comm.send(&[1u8], peer, TAG_ACK)?;
    }
}

/// The median of sorted `v` (the mean of the two middle values of an even count); NaN if empty.
fn median(v: &[f64]) -> f64 {
    match v.len() {
        0 => f64::NAN,
        l if l % 2 == 1 => v[l / 2],
        l => (v[l / 2 - 1] + v[l / 2]) / 2.0,
    }
}

/// The median of the finite values of `v` (NaN if none).
fn median_of(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    median(&v)
}

/// What was measured, per pair and direction. `None` where nothing was (the diagonal).
#[derive(Clone, Debug, PartialEq)]
struct Matrix {
    n: usize,
    /// `[a * n + b]`: one-way latency p50 and p99 (seconds, round trip / 2), symmetric.
    lat: Vec<Option<(f64, f64)>>,
    /// `[a * n + b]`: timed round trips behind `lat`.
    pings: Vec<u64>,
    /// `[from * n + to]`: bandwidth in bytes per second.
    bw: Vec<Option<f64>>,
    /// `[from * n + to]`: timed rounds behind `bw`.
    rounds: Vec<u64>,
    /// `[from * n + to]`: messages per timed round.
    msgs: Vec<u64>,
}

impl Matrix {
    /// From the gathered records: `all[(r * n + peer) * FIELDS + field]` is rank r's record of
    /// `peer`. The lower rank of a pair holds its latency, the sender of a direction its rate.
    fn from_records(n: usize, all: &[f64]) -> Matrix {
        let get = |r: usize, p: usize, f: usize| {
            all.get((r * n + p) * FIELDS + f)
                .copied()
                .filter(|x| x.is_finite() && *x > 0.0)
        };
        let mut m = Matrix {
            n,
            lat: vec![None; n * n],
            pings: vec![0; n * n],
            bw: vec![None; n * n],
            rounds: vec![0; n * n],
            msgs: vec![0; n * n],
        };
        for a in 0..n {
            for b in 0..n {
                if a == b {
                    continue;
                }
                let (lo, hi) = (a.min(b), a.max(b));
                if let (Some(p50), Some(p99)) = (get(lo, hi, F_RTT_P50), get(lo, hi, F_RTT_P99)) {
                    m.lat[a * n + b] = Some((p50 / 2.0, p99 / 2.0));
                }
                m.pings[a * n + b] = get(lo, hi, F_PINGS).unwrap_or(0.0) as u64;
                m.bw[a * n + b] = get(a, b, F_BW);
                m.rounds[a * n + b] = get(a, b, F_ROUNDS).unwrap_or(0.0) as u64;
                m.msgs[a * n + b] = get(a, b, F_MSGS).unwrap_or(0.0) as u64;
            }
        }
        m
    }

    /// Every ordered pair `(from, to)`, `from != to`.
    fn directions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.n;
        (0..n).flat_map(move |a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
    }
}

/// The bottleneck link and the slow ranks.
#[derive(Clone, Debug, PartialEq)]
struct Report {
    /// The direction with the least bandwidth: from, to, bytes/s.
    bottleneck: Option<(usize, usize, f64)>,
    /// The median bandwidth of all directions (bytes/s).
    median_bw: f64,
    /// Ranks whose every direction is under half the median of the others' (rank, its fastest
    /// direction, the others' median); `None` with fewer than 3 ranks.
    slow_bw: Option<Vec<(usize, f64, f64)>>,
    /// Ranks whose every pair's p50 is over twice the median p50 of the others' pairs (rank,
    /// its least p50, the others' median); `None` with fewer than 3 ranks.
    slow_lat: Option<Vec<(usize, f64, f64)>>,
}

impl Report {
    fn of(m: &Matrix) -> Report {
        let n = m.n;
        let bottleneck = m
            .directions()
            .filter_map(|(a, b)| m.bw[a * n + b].map(|r| (a, b, r)))
            .min_by(|x, y| x.2.total_cmp(&y.2));
        let median_bw = median_of(m.directions().filter_map(|(a, b)| m.bw[a * n + b]));
        let touches = |r: usize, (a, b): (usize, usize)| a == r || b == r;
        let slow = |value: &dyn Fn(usize, usize) -> Option<f64>, slower_is_less: bool| {
            (n >= 3).then(|| {
                (0..n)
                    .filter_map(|r| {
                        let own: Vec<f64> = m
                            .directions()
                            .filter(|&d| touches(r, d))
                            .filter_map(|(a, b)| value(a, b))
                            .collect();
                        let others = median_of(
                            m.directions()
                                .filter(|&d| !touches(r, d))
                                .filter_map(|(a, b)| value(a, b)),
                        );
                        if own.is_empty() || !others.is_finite() {
                            return None;
                        }
                        if slower_is_less {
                            let best = own.iter().copied().fold(0.0, f64::max);
                            (best < 0.5 * others).then_some((r, best, others))
                        } else {
                            let best = own.iter().copied().fold(f64::INFINITY, f64::min);
                            (best > 2.0 * others).then_some((r, best, others))
                        }
                    })
                    .collect()
            })
        };
        Report {
            bottleneck,
            median_bw,
            slow_bw: slow(&|a, b| m.bw[a * n + b], true),
            slow_lat: slow(&|a, b| m.lat[a * n + b].map(|l| l.0), false),
        }
    }
}

/// The header line: what was run, and how many counts the budget scaled down.
fn header(set: &Settings, n: usize, m: &Matrix) -> String {
    let pairs = n * (n - 1) / 2;
    let short_pings = m
        .directions()
        .filter(|&(a, b)| a < b && m.pings[a * n + b] < set.pings)
        .count();
    let short_rounds = m
        .directions()
        .filter(|&(a, b)| m.rounds[a * n + b] < set.bw_rounds || m.msgs[a * n + b] < set.bw_count)
        .count();
    let scaled = if short_pings + short_rounds == 0 {
        "none scaled down".to_string()
    } else {
        format!(
            "scaled down: round trips of {short_pings} of {pairs} pairs, rounds or messages \
             per round of {short_rounds} of {} directions",
            2 * pairs
        )
    };
    format!(
        "# tutti probe: {n} ranks, one pair at a time; latency: {} round trips of {} B per pair \
         ({} warm-up); bandwidth: {} rounds of {} x {} each way, timed until a 1-byte ack; \
         budget {}s ({scaled})",
        set.pings,
        set.lat_size,
        set.warmup,
        set.bw_rounds,
        set.bw_count,
        human_bytes(set.bw_size),
        set.budget,
    )
}

/// The three matrices and the verdicts, as text.
fn render(m: &Matrix, r: &Report) -> String {
    let n = m.n;
    let mut out = String::new();
    let lat_cell = |a: usize, b: usize| match m.lat[a * n + b] {
        Some((p50, p99)) => format!("{}/{}", sig(p50 * 1e6), sig(p99 * 1e6)),
        None => "?".to_string(),
    };
    let jit_cell = |a: usize, b: usize| match m.lat[a * n + b] {
        Some((p50, p99)) => sig((p99 - p50) * 1e6),
        None => "?".to_string(),
    };
    let bw_cell = |a: usize, b: usize| match m.bw[a * n + b] {
        Some(rate) => sig(rate * 8e-9),
        None => "?".to_string(),
    };
    out.push_str("latency, one way = round trip / 2, p50/p99 (us):\n");
    out.push_str(&grid(n, lat_cell));
    out.push_str("jitter, p99 - p50 of the one-way latency (us):\n");
    out.push_str(&grid(n, jit_cell));
    out.push_str("bandwidth, row sends to column, median round (Gbit/s):\n");
    out.push_str(&grid(n, bw_cell));
    match r.bottleneck {
        Some((a, b, rate)) => {
            let _ = writeln!(
                out,
                "bottleneck link: {a} -> {b} at {} Gbit/s (the least of {} directions; their \
                 median {} Gbit/s)",
                sig(rate * 8e-9),
                n * (n - 1),
                sig(r.median_bw * 8e-9)
            );
        }
        None => out.push_str("bottleneck link: none measured\n"),
    }
    let verdict = |out: &mut String, what: &str, v: &Option<Vec<(usize, f64, f64)>>, bw: bool| {
        let _ = match v {
            None => writeln!(
                out,
                "slow rank ({what}): none (needs 3 ranks or more to compare)"
            ),
            Some(v) if v.is_empty() => writeln!(out, "slow rank ({what}): none"),
            Some(v) => {
                for &(rank, own, others) in v {
                    let _ = if bw {
                        writeln!(
                            out,
                            "slow rank ({what}): {rank} (its fastest direction {} Gbit/s, under \
                             half the median {} Gbit/s of the others)",
                            sig(own * 8e-9),
                            sig(others * 8e-9)
                        )
                    } else {
                        writeln!(
                            out,
                            "slow rank ({what}): {rank} (its lowest p50 {} us, over twice the \
                             median {} us of the others)",
                            sig(own * 1e6),
                            sig(others * 1e6)
                        )
                    };
                }
                Ok(())
            }
        };
    };
    verdict(&mut out, "bandwidth", &r.slow_bw, true);
    verdict(&mut out, "latency", &r.slow_lat, false);
    out
}

/// A matrix with rank numbers along the top and down the side; `-` on the diagonal.
fn grid(n: usize, cell: impl Fn(usize, usize) -> String) -> String {
    let cells: Vec<Vec<String>> = (0..n)
        .map(|a| {
            (0..n)
                .map(|b| if a == b { "-".to_string() } else { cell(a, b) })
                .collect()
        })
        .collect();
    let w = cells
        .iter()
        .flatten()
        .map(String::len)
        .chain([n.to_string().len()])
        .max()
        .unwrap_or(1);
    let side = n.saturating_sub(1).to_string().len().max(4);
    let mut out = format!("{:>side$}", "rank");
    for b in 0..n {
        let _ = write!(out, "  {b:>w$}");
    }
    out.push('\n');
    for (a, row) in cells.iter().enumerate() {
        let _ = write!(out, "{a:>side$}");
        for c in row {
            let _ = write!(out, "  {c:>w$}");
        }
        out.push('\n');
    }
    out
}

/// Three significant digits, or the whole integer part: `0.0951`, `1.23`, `45.6`, `789`.
fn sig(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        a if a >= 0.1 => format!("{v:.3}"),
        _ => format!("{v:.4}"),
    }
}

/// `4194304` as `4 MiB`.
fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// The model of the worst link (see the module doc), with rank 0's reduction speeds.
fn tuning(m: &Matrix) -> Result<Tuning, String> {
    let alpha = m.lat.iter().flatten().map(|l| l.0).fold(f64::NAN, f64::max);
    let least = m.bw.iter().flatten().copied().fold(f64::NAN, f64::min);
    if !(alpha.is_finite() && least.is_finite() && least > 0.0) {
        return Err("no pair was measured: cannot write a model".to_string());
    }
    let gammas = tutti::tune::measure_gammas();
    let gamma = gammas
        .iter()
        .find(|(d, _)| *d == DType::F32)
        .map_or(Model::link(0.0, 0.0).gamma_s_per_byte, |&(_, g)| g);
    Ok(Tuning {
        model: Model {
            alpha_s: alpha,
            beta_s_per_byte: 1.0 / least,
            gamma_s_per_byte: gamma,
        },
        gamma_by_dtype: gammas,
    })
}

/// The whole measurement as one JSON object.
fn json(set: &Settings, m: &Matrix, r: &Report) -> Result<String, serde_json::Error> {
    let n = m.n;
    let pairs: Vec<serde_json::Value> = m
        .directions()
        .filter(|&(a, b)| a < b)
        .map(|(a, b)| {
            let lat = m.lat[a * n + b];
            serde_json::json!({
                "a": a,
                "b": b,
                "one_way_p50_us": lat.map(|l| l.0 * 1e6),
                "one_way_p99_us": lat.map(|l| l.1 * 1e6),
                "jitter_us": lat.map(|l| (l.1 - l.0) * 1e6),
                "round_trips": m.pings[a * n + b],
            })
        })
        .collect();
    let directions: Vec<serde_json::Value> = m
        .directions()
        .map(|(a, b)| {
            serde_json::json!({
                "from": a,
                "to": b,
                "gbit_per_s": m.bw[a * n + b].map(|x| x * 8e-9),
                "rounds": m.rounds[a * n + b],
                "messages_per_round": m.msgs[a * n + b],
            })
        })
        .collect();
    let verdict = |v: &Option<Vec<(usize, f64, f64)>>| {
        v.as_ref()
            .map(|v| v.iter().map(|x| x.0).collect::<Vec<_>>())
    };
    serde_json::to_string(&serde_json::json!({
        "ranks": n,
        "settings": {
            "pings": set.pings, "warmup": set.warmup, "lat_size": set.lat_size,
            "bw_size": set.bw_size, "bw_count": set.bw_count, "bw_rounds": set.bw_rounds,
            "budget_s": set.budget,
        },
        "latency": pairs,
        "bandwidth": directions,
        "bottleneck": r.bottleneck.map(|(a, b, x)| serde_json::json!({
            "from": a, "to": b, "gbit_per_s": x * 8e-9
        })),
        "slow_ranks_bandwidth": verdict(&r.slow_bw),
        "slow_ranks_latency": verdict(&r.slow_lat),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix of `n` ranks with every pair at `lat` seconds one way and `bw` bytes/s, except
    /// what `tweak` changes.
    fn uniform(n: usize, lat: f64, bw: f64) -> Matrix {
        let mut m = Matrix {
            n,
            lat: vec![None; n * n],
            pings: vec![100; n * n],
            bw: vec![None; n * n],
            rounds: vec![5; n * n],
            msgs: vec![4; n * n],
        };
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    m.lat[a * n + b] = Some((lat, lat * 1.5));
                    m.bw[a * n + b] = Some(bw);
                }
            }
        }
        m
    }

    /// Host `r`'s links at `bw` both ways.
    fn slow_links(m: &mut Matrix, r: usize, bw: f64) {
        let n = m.n;
        for p in (0..n).filter(|&p| p != r) {
            m.bw[r * n + p] = Some(bw);
            m.bw[p * n + r] = Some(bw * 1.05);
        }
    }

    #[test]
    fn a_rank_on_a_slow_link_is_named_and_its_link_is_the_bottleneck() {
        for n in [3, 4, 7] {
            let mut m = uniform(n, 10e-6, 118e6);
            slow_links(&mut m, 2, 11.8e6);
            // Noise among the others must not matter.
            m.bw[1] = Some(90e6);
            let r = Report::of(&m);
            let slow: Vec<usize> = r.slow_bw.as_ref().unwrap().iter().map(|x| x.0).collect();
            assert_eq!(slow, vec![2], "n = {n}: {r:?}");
            let (a, b, rate) = r.bottleneck.unwrap();
            assert!(a == 2 && b != 2 && rate == 11.8e6, "{r:?}");
            assert_eq!(r.slow_lat, Some(vec![]), "{r:?}");
            let text = render(&m, &r);
            assert!(text.contains("slow rank (bandwidth): 2 ("), "{text}");
            assert!(text.contains("bottleneck link: 2 -> "), "{text}");
            assert!(text.contains("slow rank (latency): none\n"), "{text}");
        }
    }

    #[test]
    fn a_rank_with_one_fast_link_is_not_slow_and_uniform_links_name_no_one() {
        let mut m = uniform(4, 10e-6, 118e6);
        slow_links(&mut m, 3, 11.8e6);
        m.bw[3 * 4] = Some(118e6); // 3 -> 0 is fast: not all of 3's links are slow
        let r = Report::of(&m);
        assert_eq!(r.slow_bw, Some(vec![]), "{r:?}");
        let r = Report::of(&uniform(5, 10e-6, 118e6));
        assert_eq!(r.slow_bw, Some(vec![]));
        assert_eq!(r.slow_lat, Some(vec![]));
        let r = Report::of(&uniform(2, 10e-6, 118e6));
        assert_eq!(
            (r.slow_bw, r.slow_lat),
            (None, None),
            "one link: nothing to compare"
        );
    }

    #[test]
    fn a_rank_with_high_latency_everywhere_is_named() {
        let n = 4;
        let mut m = uniform(n, 10e-6, 118e6);
        for p in (0..n).filter(|&p| p != 1) {
            m.lat[n + p] = Some((500e-6, 700e-6));
            m.lat[p * n + 1] = Some((500e-6, 700e-6));
        }
        let r = Report::of(&m);
        let slow: Vec<usize> = r.slow_lat.unwrap().iter().map(|x| x.0).collect();
        assert_eq!(slow, vec![1]);
        assert_eq!(r.slow_bw, Some(vec![]));
    }

    #[test]
    fn records_become_a_symmetric_latency_and_a_directed_bandwidth_matrix() {
        let n = 3;
        let mut all = vec![f64::NAN; n * n * FIELDS];
        let mut set = |r: usize, p: usize, f: usize, v: f64| all[(r * n + p) * FIELDS + f] = v;
        // Rank 0 timed the ping-pong with 2: 30 us round trip p50, 50 us p99.
        set(0, 2, F_RTT_P50, 30e-6);
        set(0, 2, F_RTT_P99, 50e-6);
        set(0, 2, F_PINGS, 40.0);
        set(2, 0, F_BW, 1e8);
        set(2, 0, F_ROUNDS, 3.0);
        set(2, 0, F_MSGS, 2.0);
        set(0, 2, F_BW, 2e8);
        let m = Matrix::from_records(n, &all);
        assert_eq!(m.lat[2], Some((15e-6, 25e-6)));
        assert_eq!(m.lat[6], Some((15e-6, 25e-6)));
        assert_eq!((m.pings[2], m.pings[6]), (40, 40));
        assert_eq!((m.bw[6], m.bw[2]), (Some(1e8), Some(2e8)));
        assert_eq!((m.rounds[6], m.rounds[2]), (3, 0));
        assert_eq!((m.msgs[6], m.msgs[2]), (2, 0));
        assert_eq!(m.lat[1], None, "0-1 was not measured");
        let text = render(&m, &Report::of(&m));
        assert!(text.contains("15.0/25.0"), "{text}");
        assert!(text.contains("?"), "{text}");
    }

    #[test]
    fn the_model_prices_the_worst_link() {
        let mut m = uniform(3, 10e-6, 1e9);
        m.lat[1] = Some((40e-6, 90e-6));
        m.bw[5] = Some(1e8);
        let t = tuning(&m).unwrap();
        assert_eq!(t.model.alpha_s, 40e-6);
        assert_eq!(t.model.beta_s_per_byte, 1e-8);
        assert!(t.model.gamma_s_per_byte > 0.0);
        assert!(!t.gamma_by_dtype.is_empty());
        let back = Tuning::parse(&t.to_text(&["x".into()])).unwrap();
        assert_eq!(back, t);
        let empty = Matrix {
            n: 2,
            lat: vec![None; 4],
            pings: vec![0; 4],
            bw: vec![None; 4],
            rounds: vec![0; 4],
            msgs: vec![0; 4],
        };
        assert!(tuning(&empty).is_err());
    }

    #[test]
    fn a_round_has_as_many_messages_as_fit_in_the_share_and_at_least_one() {
        let share = Duration::from_millis(300);
        assert_eq!(messages_that_fit(4, 0.001, share), 4);
        assert_eq!(
            messages_that_fit(4, 0.1, share),
            2,
            "0.3 s / 0.1 s, rounded down"
        );
        assert_eq!(
            messages_that_fit(4, 0.35, share),
            1,
            "one message takes longer"
        );
        assert_eq!(messages_that_fit(4, 0.0, share), 4);
        assert_eq!(
            messages_that_fit(1 << 16, 1e-12, Duration::from_secs(86_400)),
            1 << 16
        );
    }

    #[test]
    fn settings_survive_the_broadcast_words() {
        let s = Settings {
            pings: 77,
            warmup: 3,
            lat_size: 8,
            bw_size: 1 << 20,
            bw_count: 2,
            bw_rounds: 3,
            budget: 2.5,
        };
        assert_eq!(Settings::from_words(s.to_words()), Ok(s));
        let mut w = s.to_words();
        w[6] = f64::NAN.to_bits();
        assert!(Settings::from_words(w).is_err());
    }
}
