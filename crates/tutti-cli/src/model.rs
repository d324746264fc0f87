//! `tutti model`: the alpha-beta-gamma model's predictions, without running anything.
//!
//! `tutti model all_reduce -n 1000000 --profile wan -b 8 -e 1G -f 4` prints, per size, the
//! predicted time of every algorithm of the collective (each at its best segment size, or at
//! `--segment`) and the one [`select`] picks. The costs are closed-form
//! ([`tutti_core::model::cost`]), so a million ranks take no longer than two.
//!
//! `tutti model all_reduce -n 8 --from FILE` takes alpha, beta and gamma from a model file (what
//! `tutti probe --out FILE` writes, [`Tuning`]) instead of a profile; `--alpha`, `--beta` and
//! `--gamma` still override. An unreadable or malformed file is an error that names the file
//! (and the line).
//!
//! `tutti model --stop-and-wait` works the lecture's example instead: 1250-byte packets on a link
//! of 50 ms round trip and 100 Mbit/s. A stop-and-wait sender sends one packet per round trip,
//! 10 kbit per 50.1 ms, about 200 kbit/s; a window of `k` packets gets `k` times that until it
//! holds the bandwidth-delay product (500 packets, plus the one on the wire), and a pipelined ring
//! (segments sent back to back, a window of the bandwidth-delay product per link) runs every link
//! at the full rate.

use crate::bench::{parse_size, sweep};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tutti_core::algo::DEFAULT_SEGMENT_BYTES;
use tutti_core::model::{
    cost, segment_candidates, select_among, window_to_fill, windowed_throughput, Algorithm, Choice,
    Model, Op, Tuning,
};

/// Options of `tutti model`.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// The collective: all_reduce, broadcast, reduce, all_gather, reduce_scatter, all_to_all,
    /// gather, scatter, barrier.
    #[arg(value_name = "COLLECTIVE", value_parser = parse_op,
          required_unless_present = "stop_and_wait")]
    op: Option<Op>,
    /// Number of ranks.
    #[arg(short = 'n', long = "ranks", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..))]
    ranks: u64,
    /// Link profile: loopback, 1gbe, 10gbe, 100gbe, wan (50 ms round trip, 100 Mbit/s).
    #[arg(long, default_value = "10gbe", value_parser = parse_profile)]
    profile: Model,
    /// Read alpha, beta and gamma from a model file (`tutti probe --out FILE`) instead of a
    /// profile.
    #[arg(long, value_name = "FILE", conflicts_with = "profile")]
    from: Option<PathBuf>,
    /// Seconds per message (overrides the profile's).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    alpha: Option<f64>,
    /// Seconds per byte sent (overrides the profile's).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    beta: Option<f64>,
    /// Seconds per byte reduced (overrides the profile's).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    gamma: Option<f64>,
    /// Smallest size in bytes (suffixes K, M, G: powers of 1024).
    #[arg(short = 'b', long = "minbytes", value_name = "BYTES", default_value = "8",
          value_parser = parse_size)]
    min_bytes: usize,
    /// Largest size in bytes.
    #[arg(short = 'e', long = "maxbytes", value_name = "BYTES", default_value = "1G",
          value_parser = parse_size)]
    max_bytes: usize,
    /// Size multiplier between rows (2 or more).
    #[arg(short = 'f', long = "stepfactor", value_name = "FACTOR", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(2..))]
    step_factor: u64,
    /// Predict with this segment size only (default: each algorithm at its best of 4 KiB to
    /// 64 MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_segment)]
    segment: Option<usize>,
    /// Work the stop-and-wait example instead: packets, round trip and rate as below.
    #[arg(long)]
    stop_and_wait: bool,
    /// Packet size of the stop-and-wait example.
    #[arg(long, value_name = "BYTES", default_value = "1250", value_parser = parse_segment)]
    packet: usize,
    /// Round trip of the stop-and-wait example, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "0.05", value_parser = parse_seconds)]
    rtt: f64,
    /// Link rate of the stop-and-wait example, in bits per second.
    #[arg(long, value_name = "BITS", default_value = "100e6", value_parser = parse_rate)]
    rate: f64,
}

fn parse_op(s: &str) -> Result<Op, String> {
    Op::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        format!("unknown collective {s:?}; one of: {}", names.join(", "))
    })
}

fn parse_profile(s: &str) -> Result<Model, String> {
    Model::profile(s)
        .ok_or_else(|| format!("unknown profile {s:?}; one of: {}", Model::profile_names()))
}

/// A non-negative, finite number of seconds.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!(
            "{s:?} is not a number of seconds like 25e-6 or 0.05"
        )),
    }
}

/// A positive, finite rate.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a rate in bits per second like 100e6")),
    }
}

/// A size of at least one byte.
fn parse_segment(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err("must be at least one byte".to_string()),
        n => Ok(n),
    }
}

/// Runs `tutti model`.
pub fn run(args: ModelArgs) -> ExitCode {
    if args.stop_and_wait {
        print!("{}", stop_and_wait(args.packet, args.rtt, args.rate));
        return ExitCode::SUCCESS;
    }
    let Some(op) = args.op else {
        eprintln!("tutti model: name a collective, or pass --stop-and-wait");
        return ExitCode::FAILURE;
    };
    let base = match &args.from {
        Some(path) => match read_model(path) {
            Ok(t) => {
                println!("# model from {}", path.display());
                t.model
            }
            Err(e) => {
                eprintln!("tutti model: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => args.profile,
    };
    let model = Model {
        alpha_s: args.alpha.unwrap_or(base.alpha_s),
        beta_s_per_byte: args.beta.unwrap_or(base.beta_s_per_byte),
        gamma_s_per_byte: args.gamma.unwrap_or(base.gamma_s_per_byte),
    };
    let segs = args.segment.map_or_else(segment_candidates, |s| vec![s]);
    let n = usize::try_from(args.ranks).unwrap_or(usize::MAX);
    let factor = usize::try_from(args.step_factor).unwrap_or(usize::MAX);
    let sizes = sweep(args.min_bytes, args.max_bytes, factor);
    print!("{}", table(op, n, &model, &sizes, &segs));
    ExitCode::SUCCESS
}

/// The model in the file at `path`; the error names the file, and the line where there is one.
fn read_model(path: &Path) -> Result<Tuning, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the model file {}: {e}", path.display()))?;
    Tuning::parse(&text).map_err(|e| match e.line {
        0 => format!("{}: {}", path.display(), e.what),
        line => format!("{}:{line}: {}", path.display(), e.what),
    })
}

/// The prediction table: a header, then per size every algorithm's time and the choice.
fn table(op: Op, n: usize, model: &Model, sizes: &[usize], segs: &[usize]) -> String {
    let algos = op.selectable();
    let mut out = format!(
        "# {op} on {n} ranks: alpha {} per message, beta {}/byte ({}), gamma {}/byte\n",
        human_time(model.alpha_s),
        human_time(model.beta_s_per_byte),
        link_rate(model.beta_s_per_byte),
        human_time(model.gamma_s_per_byte),
    );
    out.push_str(&format!("{:>12}", "size"));
    for a in &algos {
        out.push_str(&format!(" {:>width$}", a.name(), width = column_width(*a)));
    }
    out.push_str("  choice\n");
    for &m in sizes {
        out.push_str(&format!("{m:>12}"));
        for &a in &algos {
            let t = best_time(a, n, m, model, segs);
            out.push_str(&format!(
                " {:>width$}",
                human_time(t),
                width = column_width(a)
            ));
        }
        out.push_str(&format!(
            "  {}\n",
            describe(&select_among(op, m, n, model, segs))
        ));
    }
    out
}

/// A column as wide as its name, at least 10.
fn column_width(a: Algorithm) -> usize {
    a.name().len().max(10)
}

/// The least predicted time of `a` over the segment sizes it can use.
fn best_time(a: Algorithm, n: usize, m: usize, model: &Model, segs: &[usize]) -> f64 {
    let segs = if a.is_segmented() {
        segs
    } else {
        &[DEFAULT_SEGMENT_BYTES][..]
    };
    segs.iter()
        .map(|&s| model.predict(cost(a, n, m, s)))
        .fold(f64::INFINITY, f64::min)
}

/// `ring (segment 1 MiB)` or `recursive_doubling`.
fn describe(c: &Choice) -> String {
    if c.algorithm.is_segmented() {
        format!(
            "{} (segment {})",
            c.algorithm.name(),
            human_bytes(c.segment)
        )
    } else {
        c.algorithm.name().to_string()
    }
}

/// Seconds with a unit: `7.00 us`, `50.1 ms`, `3.20 s`.
fn human_time(s: f64) -> String {
    let (v, unit) = match s {
        s if s <= 0.0 => (0.0, "s"),
        s if s < 1e-6 => (s * 1e9, "ns"),
        s if s < 1e-3 => (s * 1e6, "us"),
        s if s < 1.0 => (s * 1e3, "ms"),
        s => (s, "s"),
    };
    format!("{} {unit}", three_digits(v))
}

/// The link rate that `beta` seconds per byte means.
fn link_rate(beta: f64) -> String {
    if beta > 0.0 {
        human_rate(8.0 / beta)
    } else {
        "no bandwidth limit".to_string()
    }
}

/// Bits per second with a unit: `200 kbit/s`, `100 Mbit/s`.
fn human_rate(bits: f64) -> String {
    let (v, unit) = match bits {
        b if b < 1e3 => (b, "bit/s"),
        b if b < 1e6 => (b / 1e3, "kbit/s"),
        b if b < 1e9 => (b / 1e6, "Mbit/s"),
        b => (b / 1e9, "Gbit/s"),
    };
    format!("{} {unit}", three_digits(v))
}

/// Bits with a unit: `10.0 kbit`, `5.00 Mbit`.
fn human_bits(bits: f64) -> String {
    let rate = human_rate(bits);
    rate.trim_end_matches("/s").to_string()
}

/// `4096` as `4 KiB`, `1048576` as `1 MiB`.
fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Three significant digits (or the whole integer part): `1.23`, `45.6`, `789`, `1234`.
fn three_digits(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}

/// The stop-and-wait example: what windows of 1, 10, 100 packets and of the bandwidth-delay
/// product reach, and what a ring all-reduce of 1 GiB on 8 ranks takes over such links.
fn stop_and_wait(packet: usize, rtt: f64, rate: f64) -> String {
    let bits = packet as f64 * 8.0;
    let round = rtt + bits / rate;
    let fill = window_to_fill(packet, rtt, rate);
    let mut out = format!(
        "link {}, round trip {}, packets of {} B ({}): bandwidth-delay product {}, \
         {} packets\n",
        human_rate(rate),
        human_time(rtt),
        packet,
        human_bits(bits),
        human_bits(rate * rtt),
        (rate * rtt / bits).ceil()
    );
    let sw = windowed_throughput(1, packet, rtt, rate);
    out.push_str(&format!(
        "stop-and-wait (window 1): {} per {} = {} ({:.2}% of the link)\n",
        human_bits(bits),
        human_time(round),
        human_rate(sw),
        100.0 * sw / rate
    ));
    for k in [10, 100, fill] {
        let t = windowed_throughput(k, packet, rtt, rate);
        out.push_str(&format!("window of {k} packets: {}\n", human_rate(t)));
    }
    out.push_str(&ring_line(sw, rtt, rate));
    out
}

/// A ring all-reduce of 1 GiB on 8 ranks: with stop-and-wait links, and pipelined (a window of
/// the bandwidth-delay product, every link busy all the time).
fn ring_line(stop_and_wait_rate: f64, rtt: f64, rate: f64) -> String {
    let (n, m) = (8, 1usize << 30);
    let ring = Algorithm::AllReduce(tutti_core::algo::AllReduceAlgo::Ring);
    let c = cost(ring, n, m, DEFAULT_SEGMENT_BYTES);
    let time_at = |bits_per_s: f64| Model::from_bandwidth(rtt / 2.0, bits_per_s).predict(c);
    format!(
        "ring all-reduce of 1 GiB on {n} ranks ({:.2} GiB per link): stop-and-wait {}, \
         pipelined {}\n",
        c.beta / f64::from(1u32 << 30),
        human_time(time_at(stop_and_wait_rate)),
        human_time(time_at(rate))
    )
}
