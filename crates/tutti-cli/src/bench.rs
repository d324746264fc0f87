//! `tutti bench`: nccl-tests for tutti. Times one collective over a sweep of sizes and prints one
//! row per size, run on every rank under `tutti launch -n N -- tutti bench COLLECTIVE ...`:
//!
//! ```text
//! tutti bench all_reduce -b 8 -e 64M -f 2 -n 20 -w 2 -c 1 -d float -o sum -r 0 [--json|--csv]
//! ```
//!
//! The collective is the positional argument, spelled as nccl-tests' binaries or as tutti's
//! methods: `all_reduce`, `all-reduce`, `allreduce` and `all_reduce_perf` are one. The flags are
//! nccl-tests' (`-b/--minbytes`, `-e/--maxbytes`, `-f/--stepfactor`, `-n/--iters`,
//! `-w/--warmup_iters`, `-c/--check`, `-d/--datatype`, `-o/--op`, `-r/--root`). The older spellings
//! still work: `--op all-reduce` names the collective when no positional one is given (reduction
//! ops and collectives have no name in common), and `--min-bytes`, `--max-bytes`, `--factor`,
//! `--warmup` are aliases.
//!
//! # Sizes
//! `-b` to `-e` in steps of `x f` (suffixes K, M, G are powers of 1024). As in nccl-tests, a
//! requested size becomes `count = size / element size` elements, and for the collectives whose
//! buffer is one chunk per rank (all_gather, reduce_scatter, all_to_all, gather, scatter) the
//! count is rounded down to a multiple of n: `size` is then the whole buffer (`n x chunk`
//! bytes) and `count` the elements per rank (the chunk), which is what nccl-tests prints. `size`
//! is always the real size, after rounding. `barrier` moves no data: it prints one row of size 0.
//! `send_recv`: every rank sends `size` bytes to rank `(r+1) % n` and receives `size` bytes from
//! rank `(r-1+n) % n` in each iteration (nccl-tests' sendrecv); it needs 2 ranks or more.
//!
//! # Columns
//! - `size` (bytes) and `count` (elements), as above; `type` (nccl-tests' name: `float`, `half`,
//!   `bfloat16`, `int8`, ...); `redop` (`none` for collectives that do not reduce); `root` (`-1`
//!   for collectives without one).
//! - `time`: mean time per call in microseconds over the `-n` timed calls, averaged over ranks.
//!   Each size runs `-w` untimed calls, a barrier, then the timed calls back to back (no barrier
//!   between them), each timed on its own on every rank.
//! - `algbw = S / time` and `busbw = algbw x factor`, in GB/s with GB = 1e9, where S is the
//!   `size` column. Factors (nccl-tests'): all_reduce `2(n-1)/n`; all_gather, reduce_scatter,
//!   all_to_all, gather, scatter `(n-1)/n` (S being the whole n-chunk buffer); broadcast, reduce,
//!   send_recv 1; barrier 0 (time only).
//! - `p50`, `p99` (microseconds): percentiles over the timed calls of the per-call latency, where
//!   the latency of call i is the **maximum over ranks** of the time rank r spent in its call i
//!   (the slowest rank decides when a collective is done). Nearest-rank percentiles: with 10
//!   calls p50 is the 5th fastest and p99 the slowest.
//! - `#wrong`: with `-c 1` (the default), one more call on known inputs after the timed ones
//!   (`tutti::check`'s values, exact in every type and op) whose result is compared bit for bit
//!   with a sequential reference; the number of wrong elements summed over ranks. `N/A` with
//!   `-c 0`. Any wrong element makes every rank exit non-zero at the end.
//!
//! The per-call times are collected at rank 0 with the library's own `gather` and the wrong
//! counts summed with `all_reduce`, both after the timed calls of the size.
//!
//! # Output
//! Rank 0 prints; the other ranks print nothing. The default is a table with `#` comment lines
//! (the first starts with `# tutti bench`). `--json` prints one JSON object per row and line
//! (JSON Lines), fields `collective ranks size count type redop root time_us algbw_gbps
//! busbw_gbps p50_us p99_us wrong` (`redop`, `root` and `wrong` are `null` where the table says
//! `none`, `-1` or `N/A`); `--csv` prints a header line and one line per row with the same
//! fields (empty where JSON has `null`). A progress bar goes to stderr on rank 0 when stderr is a
//! terminal (under `tutti launch` it is a pipe, so the bar stays hidden).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tutti::check::{input, Sample, ValueKind};
use tutti::{bf16, f16, Communicator, DType, Element, ReduceOp};
use tutti_core::model::Op as ModelOp;
use tutti_core::reduce::finish_avg;
use tutti_core::Reducer;

/// The header line that says how rank 0 reaches the others.
pub fn links_line(comm: &Communicator) -> String {
    let shm = comm.shm_peers();
    let tcp: Vec<usize> = (0..comm.size())
        .filter(|r| *r != comm.rank() && !shm.contains(r))
        .collect();
    let list = |v: &[usize]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    format!(
        "# links of rank {}: shared memory to {}; TCP to {}",
        comm.rank(),
        list(&shm),
        list(&tcp)
    )
}

/// The collectives `tutti bench` can time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collective {
    AllReduce,
    Broadcast,
    Reduce,
    AllGather,
    ReduceScatter,
    AllToAll,
    Gather,
    Scatter,
    SendRecv,
    Barrier,
}

impl Collective {
    /// Every collective, in the order of the help text.
    pub const ALL: [Collective; 10] = [
        Collective::AllReduce,
        Collective::Broadcast,
        Collective::Reduce,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
        Collective::Gather,
        Collective::Scatter,
        Collective::SendRecv,
        Collective::Barrier,
    ];

    /// The canonical name (nccl-tests' binary without `_perf`, with tutti's underscores).
    pub const fn name(self) -> &'static str {
        match self {
            Collective::AllReduce => "all_reduce",
            Collective::Broadcast => "broadcast",
            Collective::Reduce => "reduce",
            Collective::AllGather => "all_gather",
            Collective::ReduceScatter => "reduce_scatter",
            Collective::AllToAll => "all_to_all",
            Collective::Gather => "gather",
            Collective::Scatter => "scatter",
            Collective::SendRecv => "send_recv",
            Collective::Barrier => "barrier",
        }
    }

    /// Parses a name, ignoring case, `_` and `-` and a `_perf` suffix: `all_reduce`,
    /// `all-reduce`, `allreduce`, `all_reduce_perf`, `alltoall_perf` and `sendrecv` all work.
    pub fn parse(s: &str) -> Result<Collective, String> {
        let squash = |x: &str| -> String {
            x.chars()
                .filter(|c| *c != '_' && *c != '-')
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let key = squash(s.trim());
        let key = key.strip_suffix("perf").unwrap_or(&key);
        Collective::ALL
            .into_iter()
            .find(|c| squash(c.name()) == key)
            .ok_or_else(|| {
                format!(
                    "unknown collective {s:?}; one of: {}",
                    Collective::ALL.map(Collective::name).join(", ")
                )
            })
    }

    /// Takes a root (`-r`).
    pub const fn is_rooted(self) -> bool {
        matches!(
            self,
            Collective::Broadcast | Collective::Reduce | Collective::Gather | Collective::Scatter
        )
    }

    /// Takes a reduction op (`-o`).
    pub const fn is_reduction(self) -> bool {
        matches!(
            self,
            Collective::AllReduce | Collective::Reduce | Collective::ReduceScatter
        )
    }

    /// The buffer is one chunk per rank, so its count must be a multiple of the world size.
    pub const fn is_chunked(self) -> bool {
        matches!(
            self,
            Collective::AllGather
                | Collective::ReduceScatter
                | Collective::AllToAll
                | Collective::Gather
                | Collective::Scatter
        )
    }

    /// busbw / algbw on `n` ranks (nccl-tests' factors; 0 for barrier, which moves no data).
    pub fn bus_factor(self, n: usize) -> f64 {
        let n = n as f64;
        match self {
            Collective::AllReduce => 2.0 * (n - 1.0) / n,
            Collective::AllGather
            | Collective::ReduceScatter
            | Collective::AllToAll
            | Collective::Gather
            | Collective::Scatter => (n - 1.0) / n,
            Collective::Broadcast | Collective::Reduce | Collective::SendRecv => 1.0,
            Collective::Barrier => 0.0,
        }
    }

    /// The factor's formula, for the table's header.
    const fn bus_formula(self) -> &'static str {
        match self {
            Collective::AllReduce => "2(n-1)/n",
            Collective::AllGather
            | Collective::ReduceScatter
            | Collective::AllToAll
            | Collective::Gather
            | Collective::Scatter => "(n-1)/n",
            Collective::Broadcast | Collective::Reduce | Collective::SendRecv => "1",
            Collective::Barrier => "0",
        }
    }
}

/// What one size becomes once rounded: `count` as nccl-tests prints it (elements per rank for
/// the chunked collectives) and `bytes`, the real S.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub count: usize,
    pub bytes: usize,
}

/// Rounds a requested size of `requested` bytes as nccl-tests does (see the module doc).
pub fn shape(c: Collective, requested: usize, elem: usize, n: usize) -> Shape {
    let count = requested / elem;
    if c == Collective::Barrier {
        Shape { count: 0, bytes: 0 }
    } else if c.is_chunked() {
        let chunk = count / n;
        Shape {
            count: chunk,
            bytes: chunk * n * elem,
        }
    } else {
        Shape {
            count,
            bytes: count * elem,
        }
    }
}

/// Parses `64M`, `1K`, `123`, `2g` (K, M, G: powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 4096, 64K, 64M or 1G"))
}

/// The requested sizes: `min`, `min x factor`, ... up to `max` (after 0 comes 1).
pub fn sweep(min: usize, max: usize, factor: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut s = min;
    while s <= max {
        sizes.push(s);
        s = match s {
            0 => 1,
            _ => match s.checked_mul(factor) {
                Some(next) if next > s => next,
                _ => break,
            },
        };
    }
    sizes
}

/// Parses nccl-tests' type names (`float`, `half`, `bfloat16`, `int8`, ...) and tutti's (`f32`,
/// `f16`, `bf16`, `i8`, ...).
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    let key = s.trim().to_ascii_lowercase();
    let d = match key.as_str() {
        "int8" | "char" => Some(DType::I8),
        "uint8" => Some(DType::U8),
        "int32" | "int" => Some(DType::I32),
        "uint32" => Some(DType::U32),
        "int64" => Some(DType::I64),
        "uint64" => Some(DType::U64),
        "half" | "float16" => Some(DType::F16),
        "float" | "float32" => Some(DType::F32),
        "double" | "float64" => Some(DType::F64),
        "bfloat16" => Some(DType::BF16),
        other => DType::parse(other),
    };
    d.ok_or_else(|| {
        format!(
            "unknown datatype {s:?}; one of: int8 uint8 int32 uint32 int64 uint64 half float \
             double bfloat16 (or f32 f64 f16 bf16 i8 u8 i32 u32 i64 u64)"
        )
    })
}

/// nccl-tests' name of a type, for the `type` column.
pub fn nccl_type_name(d: DType) -> &'static str {
    match d {
        DType::I8 => "int8",
        DType::U8 => "uint8",
        DType::I32 => "int32",
        DType::U32 => "uint32",
        DType::I64 => "int64",
        DType::U64 => "uint64",
        DType::F16 => "half",
        DType::F32 => "float",
        DType::F64 => "double",
        DType::BF16 => "bfloat16",
        other => other.name(),
    }
}

/// The value of `-o/--op`: a reduction op, or (the old spelling, without a positional
/// collective) the collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpArg {
    Reduce(ReduceOp),
    Collective(Collective),
}

fn parse_op_arg(s: &str) -> Result<OpArg, String> {
    if let Some(op) = ReduceOp::parse(&s.trim().to_ascii_lowercase()) {
        return Ok(OpArg::Reduce(op));
    }
    Collective::parse(s).map(OpArg::Collective).map_err(|_| {
        format!(
            "unknown reduction op {s:?}; one of: sum prod min max avg (band bor bxor on integers)"
        )
    })
}

/// Options of `tutti bench` (nccl-tests' flags).
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The collective: all_reduce, broadcast, reduce, all_gather, reduce_scatter, all_to_all,
    /// gather, scatter, send_recv, barrier (also all-reduce, all_reduce_perf, ...).
    #[arg(value_name = "COLLECTIVE", value_parser = Collective::parse)]
    collective: Option<Collective>,
    /// Smallest size in bytes (suffixes K, M, G: powers of 1024).
    #[arg(short = 'b', long = "minbytes", alias = "min-bytes", value_name = "BYTES",
          default_value = "1K", value_parser = parse_size)]
    min_bytes: usize,
    /// Largest size in bytes.
    #[arg(short = 'e', long = "maxbytes", alias = "max-bytes", value_name = "BYTES",
          default_value = "64M", value_parser = parse_size)]
    max_bytes: usize,
    /// Size multiplier between rows (2 or more).
    #[arg(
        short = 'f',
        long = "stepfactor",
        alias = "factor",
        value_name = "FACTOR",
        default_value_t = 4
    )]
    step_factor: usize,
    /// Timed calls per size.
    #[arg(short = 'n', long = "iters", value_name = "N", default_value_t = 10)]
    iters: usize,
    /// Untimed calls per size, before the timed ones.
    #[arg(
        short = 'w',
        long = "warmup_iters",
        visible_alias = "warmup-iters",
        alias = "warmup",
        value_name = "N",
        default_value_t = 2
    )]
    warmup: usize,
    /// 1: check one call per size and count wrong elements; 0: do not.
    #[arg(short = 'c', long = "check", value_name = "0|1", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(0..=1))]
    check: u8,
    /// Element type: int8 uint8 int32 uint32 int64 uint64 half float double bfloat16 (or f32,
    /// bf16, i8, ...).
    #[arg(short = 'd', long = "datatype", default_value = "float", value_parser = parse_dtype)]
    datatype: DType,
    /// Reduction op: sum prod min max avg (band bor bxor on integers). Without a positional
    /// collective, a collective name here is taken as the collective (the old `--op all-reduce`).
    #[arg(short = 'o', long = "op", default_value = "sum", value_parser = parse_op_arg)]
    op: OpArg,
    /// Root rank of broadcast, reduce, gather and scatter.
    #[arg(short = 'r', long = "root", default_value_t = 0)]
    root: usize,
    /// Algorithm overrides, as TUTTI_ALGO (e.g. allreduce:naive).
    #[arg(long)]
    algo: Option<String>,
    /// One JSON object per row and line on stdout, instead of the table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV on stdout (a header line, then one line per row), instead of the table.
    #[arg(long)]
    csv: bool,
}

/// How rows are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

/// The arguments, checked (everything that does not need the world).
#[derive(Clone, Debug)]
struct Plan {
    collective: Collective,
    dtype: DType,
    redop: ReduceOp,
    root: usize,
    sizes: Vec<usize>,
    iters: usize,
    warmup: usize,
    check: bool,
    format: Format,
}

fn plan(args: &BenchArgs) -> Result<Plan, String> {
    let (collective, redop) = match (args.collective, args.op) {
        (Some(c), OpArg::Reduce(op)) => (c, op),
        (None, OpArg::Reduce(op)) => (Collective::AllReduce, op),
        (None, OpArg::Collective(c)) => (c, ReduceOp::Sum),
        (Some(c), OpArg::Collective(o)) => {
            return Err(format!(
                "-o/--op takes a reduction op (sum prod min max avg), not {:?}: the collective \
                 is {:?}, the positional argument",
                o.name(),
                c.name()
            ))
        }
    };
    if args.step_factor < 2 {
        return Err(format!(
            "-f/--stepfactor must be 2 or more, not {}",
            args.step_factor
        ));
    }
    if args.min_bytes > args.max_bytes {
        return Err(format!(
            "-b/--minbytes ({}) is larger than -e/--maxbytes ({})",
            args.min_bytes, args.max_bytes
        ));
    }
    if args.iters == 0 {
        return Err("-n/--iters must be 1 or more".into());
    }
    if collective.is_reduction() && redop.is_bitwise() && args.datatype.is_float() {
        return Err(format!(
            "reduction op {redop} is not defined on {} (bitwise ops take integer types)",
            nccl_type_name(args.datatype)
        ));
    }
    let sizes = if collective == Collective::Barrier {
        vec![0]
    } else {
        sweep(args.min_bytes, args.max_bytes, args.step_factor)
    };
    Ok(Plan {
        collective,
        dtype: args.datatype,
        redop,
        root: args.root,
        sizes,
        iters: args.iters,
        warmup: args.warmup,
        check: args.check == 1,
        format: if args.json {
            Format::Json
        } else if args.csv {
            Format::Csv
        } else {
            Format::Table
        },
    })
}

/// Runs the benchmark; rank 0 prints.
pub fn run(args: BenchArgs) -> ExitCode {
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tutti bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn bench(args: &BenchArgs) -> Result<(), BoxError> {
    let plan = plan(args)?;
    let comm = Communicator::from_env()?;
    if let Some(spec) = &args.algo {
        comm.set_algorithms(comm.algorithms().parse(spec)?);
    }
    let n = comm.size();
    if plan.collective.is_rooted() && plan.root >= n {
        return Err(format!("-r/--root {} is out of range for {n} ranks", plan.root).into());
    }
    if plan.collective == Collective::SendRecv && n < 2 {
        return Err("send_recv needs 2 ranks or more (a rank does not send to itself)".into());
    }
    match plan.dtype {
        DType::F32 => sweep_typed::<f32>(&comm, &plan),
        DType::F64 => sweep_typed::<f64>(&comm, &plan),
        DType::F16 => sweep_typed::<f16>(&comm, &plan),
        DType::BF16 => sweep_typed::<bf16>(&comm, &plan),
        DType::I8 => sweep_typed::<i8>(&comm, &plan),
        DType::U8 => sweep_typed::<u8>(&comm, &plan),
        DType::I32 => sweep_typed::<i32>(&comm, &plan),
        DType::U32 => sweep_typed::<u32>(&comm, &plan),
        DType::I64 => sweep_typed::<i64>(&comm, &plan),
        DType::U64 => sweep_typed::<u64>(&comm, &plan),
        other => Err(format!("datatype {other} is not supported by tutti bench").into()),
    }
}

/// One row of output.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub collective: &'static str,
    pub ranks: usize,
    pub size: usize,
    pub count: usize,
    #[serde(rename = "type")]
    pub dtype: &'static str,
    pub redop: Option<&'static str>,
    pub root: Option<usize>,
    pub time_us: f64,
    pub algbw_gbps: f64,
    pub busbw_gbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub wrong: Option<u64>,
    /// The algorithm that ran (as the communicator chose or was told), and its segment size.
    pub algorithm: &'static str,
    pub segment: usize,
    /// The cost model's prediction for that algorithm and segment (`None`: no model).
    pub model_us: Option<f64>,
}

const TABLE_COLUMNS: [&str; 14] = [
    "size",
    "count",
    "type",
    "redop",
    "root",
    "time",
    "algbw",
    "busbw",
    "p50",
    "p99",
    "#wrong",
    "algorithm",
    "segment",
    "model",
];
const TABLE_UNITS: [&str; 14] = [
    "(B)",
    "(elements)",
    "",
    "",
    "",
    "(us)",
    "(GB/s)",
    "(GB/s)",
    "(us)",
    "(us)",
    "",
    "",
    "(B)",
    "(us)",
];
const WIDTHS: [usize; 14] = [12, 12, 9, 6, 6, 10, 8, 8, 10, 10, 7, 19, 9, 10];
const CSV_HEADER: &str =
    "collective,ranks,size,count,type,redop,root,time_us,algbw_gbps,busbw_gbps,\
                          p50_us,p99_us,wrong,algorithm,segment,model_us";

/// A header line of the table: `#` then the cells right-aligned in the columns' widths.
fn table_header(cells: &[&str; 14]) -> String {
    let mut line = String::from("#");
    for (i, (cell, w)) in cells.iter().zip(WIDTHS).enumerate() {
        let w = if i == 0 { w - 1 } else { w };
        let _ = write!(line, "{}{cell:>w$}", if i == 0 { "" } else { " " });
    }
    line.trim_end().to_string()
}

impl Row {
    fn table(&self) -> String {
        let w = WIDTHS;
        let root = self.root.map_or("-1".to_string(), |r| r.to_string());
        let wrong = self.wrong.map_or("N/A".to_string(), |r| r.to_string());
        let model = self.model_us.map_or("-".to_string(), |m| format!("{m:.2}"));
        format!(
            "{:>w0$} {:>w1$} {:>w2$} {:>w3$} {root:>w4$} {:>w5$.2} {:>w6$.3} {:>w7$.3} {:>w8$.2} \
             {:>w9$.2} {wrong:>w10$} {:>w11$} {:>w12$} {model:>w13$}",
            self.size,
            self.count,
            self.dtype,
            self.redop.unwrap_or("none"),
            self.time_us,
            self.algbw_gbps,
            self.busbw_gbps,
            self.p50_us,
            self.p99_us,
            self.algorithm,
            self.segment,
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4],
            w5 = w[5],
            w6 = w[6],
            w7 = w[7],
            w8 = w[8],
            w9 = w[9],
            w10 = w[10],
            w11 = w[11],
            w12 = w[12],
            w13 = w[13],
        )
    }

    fn csv(&self) -> String {
        let opt = |o: Option<String>| o.unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{:.3},{:.6},{:.6},{:.3},{:.3},{},{},{},{}",
            self.collective,
            self.ranks,
            self.size,
            self.count,
            self.dtype,
            self.redop.unwrap_or(""),
            opt(self.root.map(|r| r.to_string())),
            self.time_us,
            self.algbw_gbps,
            self.busbw_gbps,
            self.p50_us,
            self.p99_us,
            opt(self.wrong.map(|w| w.to_string())),
            self.algorithm,
            self.segment,
            opt(self.model_us.map(|m| format!("{m:.3}"))),
        )
    }
}

/// Time statistics of one size, from every rank's per-call times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Mean per call, averaged over ranks (seconds).
    pub mean: f64,
    /// Percentiles over calls of the slowest rank's time for that call (seconds).
    pub p50: f64,
    pub p99: f64,
}

/// `times[r * iters + i]` is rank r's time for call i.
pub fn stats(times: &[f64], iters: usize) -> Stats {
    if times.is_empty() || iters == 0 {
        return Stats {
            mean: 0.0,
            p50: 0.0,
            p99: 0.0,
        };
    }
    let ranks = times.len() / iters;
    // Equal calls per rank: the mean of the ranks' means is the mean of everything.
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let mut slowest: Vec<f64> = (0..iters)
        .map(|i| (0..ranks).map(|r| times[r * iters + i]).fold(0.0, f64::max))
        .collect();
    slowest.sort_by(f64::total_cmp);
    Stats {
        mean,
        p50: percentile(&slowest, 50.0),
        p99: percentile(&slowest, 99.0),
    }
}

/// Nearest-rank percentile of sorted, non-empty `v`: the smallest value with at least `p`% of
/// the values at or below it.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Rank 0's output: table, JSON or CSV lines on stdout, a progress bar on stderr.
struct Printer {
    format: Format,
    bar: ProgressBar,
    busbw_sum: f64,
    rows: usize,
}

impl Printer {
    fn new(format: Format, sizes: usize) -> Printer {
        let bar = ProgressBar::new(sizes as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "tutti bench [{bar:30}] {pos}/{len} sizes, {msg} ({elapsed})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Printer {
            format,
            bar,
            busbw_sum: 0.0,
            rows: 0,
        }
    }

    /// Writes `lines` to stdout with the bar out of the way; an error (a closed pipe) is returned,
    /// not a panic.
    fn print(&self, lines: &[String]) -> std::io::Result<()> {
        self.bar.suspend(|| {
            let mut out = std::io::stdout().lock();
            for l in lines {
                writeln!(out, "{l}")?;
            }
            out.flush()
        })
    }

    fn header(&self, comm: &Communicator, plan: &Plan) -> std::io::Result<()> {
        let n = comm.size();
        let c = plan.collective;
        match self.format {
            Format::Json => Ok(()),
            Format::Csv => self.print(&[CSV_HEADER.to_string()]),
            Format::Table => {
                let a = comm.algorithms();
                let algo = match c {
                    Collective::AllReduce => a.all_reduce.to_string(),
                    Collective::Broadcast => a.broadcast.to_string(),
                    Collective::Reduce => a.reduce.to_string(),
                    Collective::AllGather => a.all_gather.to_string(),
                    Collective::ReduceScatter => a.reduce_scatter.to_string(),
                    Collective::AllToAll => a.all_to_all.to_string(),
                    Collective::Gather => a.gather.to_string(),
                    Collective::Scatter => a.scatter.to_string(),
                    Collective::SendRecv => "send/recv".to_string(),
                    Collective::Barrier => a.barrier.to_string(),
                };
                self.print(&[
                    format!(
                        "# tutti bench: {} on {n} rank{}; {}, {}, root {}; {} iters, {} warm-up, \
                         check {}; algorithm {algo}, segment {} B",
                        c.name(),
                        if n == 1 { "" } else { "s" },
                        nccl_type_name(plan.dtype),
                        if c.is_reduction() {
                            plan.redop.name()
                        } else {
                            "none"
                        },
                        if c.is_rooted() { plan.root as i64 } else { -1 },
                        plan.iters,
                        plan.warmup,
                        if plan.check { "on" } else { "off" },
                        a.segment_bytes,
                    ),
                    links_line(comm),
                    format!(
                        "# time: mean per call, averaged over ranks; p50/p99: over calls, of the \
                         slowest rank's time; busbw = algbw x {} = {:.3}",
                        c.bus_formula(),
                        c.bus_factor(n)
                    ),
                    "#".to_string(),
                    table_header(&TABLE_COLUMNS),
                    table_header(&TABLE_UNITS),
                ])
            }
        }
    }

    fn row(&mut self, row: &Row) -> Result<(), BoxError> {
        self.busbw_sum += row.busbw_gbps;
        self.rows += 1;
        let line = match self.format {
            Format::Table => row.table(),
            Format::Json => serde_json::to_string(row)?,
            Format::Csv => row.csv(),
        };
        self.print(&[line])?;
        Ok(())
    }

    fn footer(&self, wrong: Option<u64>) -> std::io::Result<()> {
        self.bar.finish_and_clear();
        if self.format != Format::Table {
            return Ok(());
        }
        let verdict = match wrong {
            None => "not checked".to_string(),
            Some(0) => "0 OK".to_string(),
            Some(w) => format!("{w} FAILED"),
        };
        self.print(&[
            format!("# Wrong elements     : {verdict}"),
            format!(
                "# Avg bus bandwidth  : {:.3} GB/s",
                self.busbw_sum / self.rows.max(1) as f64
            ),
        ])
    }
}

fn sweep_typed<T: Sample>(comm: &Communicator, plan: &Plan) -> Result<(), BoxError> {
    let (n, rank) = (comm.size(), comm.rank());
    let c = plan.collective;
    let mut printer = (rank == 0).then(|| Printer::new(plan.format, plan.sizes.len()));
    if let Some(p) = &printer {
        p.header(comm, plan)?;
    }
    let mut total_wrong = 0u64;
    for &requested in &plan.sizes {
        let shape = shape(c, requested, T::DTYPE.size(), n);
        if let Some(p) = &printer {
            p.bar.set_message(format!("{} B", shape.bytes));
        }
        let mine = time_size::<T>(comm, plan, shape.count)?;
        let wrong = if plan.check {
            Some(check_once::<T>(comm, plan, shape.count)?)
        } else {
            None
        };
        // Statistics, outside the timed calls: every rank's per-call times to rank 0, and the
        // sum of the wrong counts to everyone (so that every rank can fail at the end).
        let mut all = if rank == 0 {
            vec![0f64; n * plan.iters]
        } else {
            Vec::new()
        };
        comm.gather(&mine, (rank == 0).then_some(&mut all[..]), 0)?;
        let mut wrong_sum = [wrong.unwrap_or(0)];
        comm.all_reduce(&mut wrong_sum, ReduceOp::Sum)?;
        total_wrong += wrong_sum[0];
        let choice = model_op(c).map(|op| {
            let bytes = model_bytes(c, shape.count * T::DTYPE.size(), n);
            comm.plan_of(op, Some(T::DTYPE), bytes)
        });
        if let Some(p) = &mut printer {
            let s = stats(&all, plan.iters);
            let algbw = if s.mean > 0.0 {
                shape.bytes as f64 / s.mean / 1e9
            } else {
                0.0
            };
            p.row(&Row {
                collective: c.name(),
                ranks: n,
                size: shape.bytes,
                count: shape.count,
                dtype: nccl_type_name(plan.dtype),
                redop: c.is_reduction().then(|| plan.redop.name()),
                root: c.is_rooted().then_some(plan.root),
                time_us: s.mean * 1e6,
                algbw_gbps: algbw,
                busbw_gbps: algbw * c.bus_factor(n),
                p50_us: s.p50 * 1e6,
                p99_us: s.p99 * 1e6,
                wrong: plan.check.then_some(wrong_sum[0]),
                algorithm: choice.as_ref().map_or("send/recv", |c| c.algorithm.name()),
                segment: choice.as_ref().map_or(0, |c| c.segment),
                model_us: choice
                    .as_ref()
                    .map(|c| c.seconds * 1e6)
                    .filter(|m| m.is_finite()),
            })?;
            p.bar.inc(1);
        }
    }
    if let Some(p) = &printer {
        p.footer(plan.check.then_some(total_wrong))?;
    }
    if total_wrong > 0 {
        return Err(format!("{total_wrong} wrong elements (see the #wrong column)").into());
    }
    Ok(())
}

/// The collective of the cost model that `c` runs (`None`: point-to-point).
fn model_op(c: Collective) -> Option<ModelOp> {
    Some(match c {
        Collective::AllReduce => ModelOp::AllReduce,
        Collective::Broadcast => ModelOp::Broadcast,
        Collective::Reduce => ModelOp::Reduce,
        Collective::AllGather => ModelOp::AllGather,
        Collective::ReduceScatter => ModelOp::ReduceScatter,
        Collective::AllToAll => ModelOp::AllToAll,
        Collective::Gather => ModelOp::Gather,
        Collective::Scatter => ModelOp::Scatter,
        Collective::Barrier => ModelOp::Barrier,
        Collective::SendRecv => return None,
    })
}

/// The bytes the cost model counts for `c` with `count_bytes` per rank's block (see
/// `tutti_core::model`): the buffer of the all-reduce, broadcast and reduce, the whole buffer of
/// the others (`n` blocks).
fn model_bytes(c: Collective, count_bytes: usize, n: usize) -> usize {
    match c {
        Collective::AllReduce | Collective::Broadcast | Collective::Reduce => count_bytes,
        Collective::Barrier | Collective::SendRecv => 0,
        _ => n * count_bytes,
    }
}

/// The p2p tag of send_recv.
const SEND_RECV_TAG: u32 = 0x6265_6e63; // "benc"

/// Buffer lengths (send, receive) on this rank for `count` (the printed count).
fn buffer_lens(c: Collective, count: usize, n: usize, is_root: bool) -> (usize, usize) {
    match c {
        Collective::AllReduce | Collective::Broadcast | Collective::Reduce => (count, 0),
        Collective::AllGather => (count, n * count),
        Collective::Gather => (count, if is_root { n * count } else { 0 }),
        Collective::ReduceScatter => (n * count, count),
        Collective::Scatter => (if is_root { n * count } else { 0 }, count),
        Collective::AllToAll => (n * count, n * count),
        Collective::SendRecv => (count, count),
        Collective::Barrier => (0, 0),
    }
}

/// One call of the collective (in-place ones work on `send`).
fn call<T: Element>(
    comm: &Communicator,
    plan: &Plan,
    send: &mut [T],
    recv: &mut [T],
) -> tutti::Result<()> {
    let (n, rank, root, op) = (comm.size(), comm.rank(), plan.root, plan.redop);
    match plan.collective {
        Collective::AllReduce => comm.all_reduce(send, op),
        Collective::Broadcast => comm.broadcast(send, root),
        Collective::Reduce => comm.reduce_in_place(send, op, root),
        Collective::AllGather => comm.all_gather(send, recv),
        Collective::ReduceScatter => comm.reduce_scatter(send, recv, op),
        Collective::AllToAll => comm.all_to_all(send, recv),
        Collective::Gather => comm.gather(send, (rank == root).then_some(recv), root),
        Collective::Scatter => comm.scatter((rank == root).then_some(&*send), recv, root),
        Collective::SendRecv => {
            // A send does not wait for its receiver, so send-then-receive cannot deadlock.
            comm.send(send, (rank + 1) % n, SEND_RECV_TAG)?;
            comm.recv(recv, (rank + n - 1) % n, SEND_RECV_TAG)
        }
        Collective::Barrier => comm.barrier(),
    }
}

/// Warm-up calls, a barrier, then the timed calls; returns this rank's time of each (seconds).
fn time_size<T: Sample>(comm: &Communicator, plan: &Plan, count: usize) -> tutti::Result<Vec<f64>> {
    let (send_len, recv_len) = buffer_lens(
        plan.collective,
        count,
        comm.size(),
        comm.rank() == plan.root,
    );
    // Zeros stay zeros under every op: no overflow to infinities, no subnormals.
    let mut send = vec![T::zeroed(); send_len];
    let mut recv = vec![T::zeroed(); recv_len];
    for _ in 0..plan.warmup {
        call(comm, plan, &mut send, &mut recv)?;
    }
    comm.barrier()?;
    let mut times = Vec::with_capacity(plan.iters);
    let mut last = Instant::now();
    for _ in 0..plan.iters {
        call(comm, plan, &mut send, &mut recv)?;
        let now = Instant::now();
        times.push((now - last).as_secs_f64());
        last = now;
    }
    Ok(times)
}

/// Elements of `got` that differ (bit for bit) from `want`, plus any difference in length.
pub fn count_wrong<T: Element>(got: &[T], want: &[T]) -> u64 {
    let es = T::DTYPE.size();
    let g: &[u8] = bytemuck::cast_slice(got);
    let w: &[u8] = bytemuck::cast_slice(want);
    let differ = g
        .chunks_exact(es)
        .zip(w.chunks_exact(es))
        .filter(|(a, b)| a != b)
        .count();
    (differ + got.len().abs_diff(want.len())) as u64
}

/// The reduction of `n` inputs (`input_of(r)` for rank r) with the library's kernels.
fn reference<T: Sample>(
    n: usize,
    op: ReduceOp,
    mut input_of: impl FnMut(usize) -> Vec<T>,
) -> Result<Vec<T>, BoxError> {
    let r = Reducer::new(T::DTYPE, op)?;
    let mut acc = input_of(0);
    for j in 1..n {
        r.combine(
            bytemuck::cast_slice_mut(&mut acc),
            bytemuck::cast_slice(&input_of(j)),
        );
    }
    finish_avg(&r, bytemuck::cast_slice_mut(&mut acc), n);
    Ok(acc)
}

/// One call on known inputs; returns this rank's number of wrong elements.
fn check_once<T: Sample>(comm: &Communicator, plan: &Plan, count: usize) -> Result<u64, BoxError> {
    let (n, rank, root, op) = (comm.size(), comm.rank(), plan.root, plan.redop);
    let kind = if op == ReduceOp::Prod {
        ValueKind::Product
    } else {
        ValueKind::General
    };
    let case = 0x7475_7474_6900_0000 ^ count as u64;
    let of = |r: usize, len: usize| input::<T>(case, r, len, kind);
    let zeros = |len: usize| vec![T::zeroed(); len];
    let block = |v: &[T], j: usize| v[j * count..(j + 1) * count].to_vec();
    let wrong = match plan.collective {
        Collective::AllReduce => {
            let mut buf = of(rank, count);
            comm.all_reduce(&mut buf, op)?;
            count_wrong(&buf, &reference(n, op, |j| of(j, count))?)
        }
        Collective::Broadcast => {
            let mut buf = if rank == root {
                of(rank, count)
            } else {
                zeros(count)
            };
            comm.broadcast(&mut buf, root)?;
            count_wrong(&buf, &of(root, count))
        }
        Collective::Reduce => {
            let mut buf = of(rank, count);
            comm.reduce_in_place(&mut buf, op, root)?;
            if rank == root {
                count_wrong(&buf, &reference(n, op, |j| of(j, count))?)
            } else {
                count_wrong(&buf, &of(rank, count)) // left unchanged
            }
        }
        Collective::AllGather => {
            let mut recv = zeros(n * count);
            comm.all_gather(&of(rank, count), &mut recv)?;
            (0..n)
                .map(|j| count_wrong(&block(&recv, j), &of(j, count)))
                .sum()
        }
        Collective::Gather => {
            let mut recv = zeros(if rank == root { n * count } else { 0 });
            comm.gather(
                &of(rank, count),
                (rank == root).then_some(&mut recv[..]),
                root,
            )?;
            if rank == root {
                (0..n)
                    .map(|j| count_wrong(&block(&recv, j), &of(j, count)))
                    .sum()
            } else {
                0
            }
        }
        Collective::ReduceScatter => {
            let mut recv = zeros(count);
            comm.reduce_scatter(&of(rank, n * count), &mut recv, op)?;
            count_wrong(
                &recv,
                &reference(n, op, |j| block(&of(j, n * count), rank))?,
            )
        }
        Collective::Scatter => {
            let send: Vec<T> = if rank == root {
                (0..n).flat_map(|j| of(j, count)).collect()
            } else {
                Vec::new()
            };
            let mut recv = zeros(count);
            comm.scatter((rank == root).then_some(&send[..]), &mut recv, root)?;
            count_wrong(&recv, &of(rank, count))
        }
        Collective::AllToAll => {
            let mut recv = zeros(n * count);
            comm.all_to_all(&of(rank, n * count), &mut recv)?;
            // Block j of what this rank receives is block `rank` of rank j's input.
            (0..n)
                .map(|j| count_wrong(&block(&recv, j), &block(&of(j, n * count), rank)))
                .sum()
        }
        Collective::SendRecv => {
            let prev = (rank + n - 1) % n;
            comm.send(&of(rank, count), (rank + 1) % n, SEND_RECV_TAG)?;
            let mut recv = zeros(count);
            comm.recv(&mut recv, prev, SEND_RECV_TAG)?;
            count_wrong(&recv, &of(prev, count))
        }
        Collective::Barrier => {
            comm.barrier()?;
            0
        }
    };
    Ok(wrong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan_of(argv: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        plan(&cli.args)
    }

    #[test]
    fn sizes_parse_with_powers_of_1024() {
        assert_eq!(parse_size("8"), Ok(8));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size(" 3k "), Ok(3072));
        for bad in ["", "K", "1.5M", "-1", "12X", "1KB", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_size(&format!("{}G", usize::MAX)).is_err(), "overflow");
    }

    #[test]
    fn sweeps_multiply_up_to_the_maximum() {
        assert_eq!(sweep(8, 64, 2), vec![8, 16, 32, 64]);
        assert_eq!(sweep(8, 1 << 20, 4).last(), Some(&(1 << 19)));
        assert_eq!(sweep(8, 1 << 20, 4).len(), 9);
        assert_eq!(sweep(5, 5, 2), vec![5]);
        assert_eq!(sweep(0, 4, 2), vec![0, 1, 2, 4]);
        assert_eq!(sweep(usize::MAX / 2 + 1, usize::MAX, 2).len(), 1);
    }

    #[test]
    fn bus_factors_are_nccl_tests() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(Collective::AllReduce.bus_factor(2), 1.0));
        assert!(close(Collective::AllReduce.bus_factor(4), 1.5));
        assert!(close(Collective::AllReduce.bus_factor(1), 0.0));
        for c in [
            Collective::AllGather,
            Collective::ReduceScatter,
            Collective::AllToAll,
            Collective::Gather,
            Collective::Scatter,
        ] {
            assert!(close(c.bus_factor(4), 0.75), "{c:?}");
            assert!(close(c.bus_factor(3), 2.0 / 3.0), "{c:?}");
        }
        for c in [
            Collective::Broadcast,
            Collective::Reduce,
            Collective::SendRecv,
        ] {
            assert!(close(c.bus_factor(3), 1.0), "{c:?}");
        }
        assert_eq!(Collective::Barrier.bus_factor(3), 0.0);
    }

    #[test]
    fn chunked_sizes_round_down_to_n_chunks() {
        // 1000 B of f32 on 3 ranks: 250 elements, 83 per rank, 996 B in all.
        let s = shape(Collective::AllGather, 1000, 4, 3);
        assert_eq!(
            s,
            Shape {
                count: 83,
                bytes: 996
            }
        );
        assert_eq!(
            shape(Collective::AllReduce, 1000, 4, 3),
            Shape {
                count: 250,
                bytes: 1000
            }
        );
        assert_eq!(
            shape(Collective::AllReduce, 1001, 8, 3),
            Shape {
                count: 125,
                bytes: 1000
            }
        );
        assert_eq!(
            shape(Collective::Scatter, 8, 4, 3),
            Shape { count: 0, bytes: 0 }
        );
        assert_eq!(
            shape(Collective::AllToAll, 24, 4, 3),
            Shape {
                count: 2,
                bytes: 24
            }
        );
        assert_eq!(
            shape(Collective::Barrier, 4096, 4, 3),
            Shape { count: 0, bytes: 0 }
        );
        assert_eq!(
            shape(Collective::SendRecv, 7, 2, 5),
            Shape { count: 3, bytes: 6 }
        );
    }

    #[test]
    fn collective_names_in_every_spelling() {
        for (s, c) in [
            ("all_reduce", Collective::AllReduce),
            ("all-reduce", Collective::AllReduce),
            ("all_reduce_perf", Collective::AllReduce),
            ("AllReduce", Collective::AllReduce),
            ("alltoall_perf", Collective::AllToAll),
            ("all-to-all", Collective::AllToAll),
            ("sendrecv_perf", Collective::SendRecv),
            ("send_recv", Collective::SendRecv),
            ("reduce_scatter", Collective::ReduceScatter),
            ("reduce", Collective::Reduce),
            ("barrier", Collective::Barrier),
        ] {
            assert_eq!(Collective::parse(s), Ok(c), "{s}");
        }
        for c in Collective::ALL {
            assert_eq!(Collective::parse(c.name()), Ok(c));
        }
        let err = Collective::parse("all_reduc").unwrap_err();
        assert!(
            err.contains("all_reduc") && err.contains("send_recv"),
            "{err}"
        );
        assert!(Collective::parse("perf").is_err());
    }

    #[test]
    fn datatypes_in_nccl_and_tutti_names() {
        for (s, d) in [
            ("float", DType::F32),
            ("f32", DType::F32),
            ("half", DType::F16),
            ("bfloat16", DType::BF16),
            ("bf16", DType::BF16),
            ("double", DType::F64),
            ("int8", DType::I8),
            ("uint8", DType::U8),
            ("int32", DType::I32),
            ("uint64", DType::U64),
            ("i64", DType::I64),
        ] {
            assert_eq!(parse_dtype(s), Ok(d), "{s}");
        }
        for d in DType::ALL {
            assert_eq!(parse_dtype(nccl_type_name(d)), Ok(d));
            assert_eq!(parse_dtype(d.name()), Ok(d));
        }
        assert!(parse_dtype("float128").unwrap_err().contains("bfloat16"));
    }

    #[test]
    fn percentiles_are_nearest_rank_of_the_slowest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 198.0);
        // Two ranks, three calls: the slowest per call is [3, 5, 4].
        let s = stats(&[1.0, 5.0, 1.0, 3.0, 2.0, 4.0], 3);
        assert_eq!(s.mean, 16.0 / 6.0);
        assert_eq!((s.p50, s.p99), (4.0, 5.0));
    }

    #[test]
    fn flags_take_nccl_and_old_spellings() {
        let p = plan_of(&[
            "all_gather",
            "-b",
            "8",
            "-e",
            "1M",
            "-f",
            "2",
            "-n",
            "3",
            "-w",
            "0",
        ])
        .unwrap();
        assert_eq!(p.collective, Collective::AllGather);
        assert_eq!(
            (p.sizes.len(), p.iters, p.warmup, p.check),
            (18, 3, 0, true)
        );
        let p = plan_of(&[
            "reduce",
            "--minbytes",
            "1K",
            "--maxbytes",
            "4K",
            "--stepfactor",
            "2",
            "--iters",
            "2",
            "--warmup_iters",
            "1",
            "--check",
            "0",
            "--datatype",
            "bfloat16",
            "--op",
            "max",
            "--root",
            "1",
            "--csv",
        ])
        .unwrap();
        assert_eq!(p.sizes, vec![1024, 2048, 4096]);
        assert_eq!(
            (p.dtype, p.redop, p.root, p.check),
            (DType::BF16, ReduceOp::Max, 1, false)
        );
        assert_eq!(p.format, Format::Csv);
        // The old flags: --op names the collective when there is no positional one.
        let p = plan_of(&[
            "--op",
            "all-to-all",
            "--min-bytes",
            "4M",
            "--max-bytes",
            "4M",
        ])
        .unwrap();
        assert_eq!(
            (p.collective, p.redop, p.sizes.len()),
            (Collective::AllToAll, ReduceOp::Sum, 1)
        );
        let p = plan_of(&["--factor", "2", "--warmup", "3", "--json"]).unwrap();
        assert_eq!(
            (p.collective, p.warmup, p.format),
            (Collective::AllReduce, 3, Format::Json)
        );
        assert_eq!(plan_of(&["barrier"]).unwrap().sizes, vec![0]);
    }

    #[test]
    fn bad_arguments_are_clear_errors() {
        for (argv, needle) in [
            (&["all_reduc"][..], "unknown collective"),
            (&["all_reduce", "-d", "float128"], "unknown datatype"),
            (&["all_reduce", "-o", "median"], "unknown reduction op"),
            (&["all_reduce", "--op", "broadcast"], "not \"broadcast\""),
            (&["all_reduce", "-o", "band"], "not defined on float"),
            (&["all_reduce", "-f", "1"], "stepfactor"),
            (&["all_reduce", "-b", "2M", "-e", "1M"], "larger than"),
            (&["all_reduce", "-n", "0"], "iters"),
            (&["all_reduce", "-c", "2"], "2"),
            (&["all_reduce", "-b", "1X"], "not a size"),
            (&["all_reduce", "--json", "--csv"], "cannot be used with"),
        ] {
            let err = plan_of(argv).unwrap_err();
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
        // Bitwise ops are fine on integers.
        assert!(plan_of(&["all_reduce", "-o", "bxor", "-d", "int32"]).is_ok());
    }

    #[test]
    fn table_rows_line_up_with_the_header() {
        let row = Row {
            collective: "all_reduce",
            ranks: 2,
            size: 1048576,
            count: 262144,
            dtype: "float",
            redop: Some("sum"),
            root: None,
            time_us: 1234.5,
            algbw_gbps: 0.849,
            busbw_gbps: 0.849,
            p50_us: 1200.0,
            p99_us: 1500.25,
            wrong: Some(0),
            algorithm: "double_binary_tree",
            segment: 262144,
            model_us: Some(1100.0),
        };
        let line = row.table();
        let header = table_header(&TABLE_COLUMNS);
        assert_eq!(line.len(), header.len(), "\n{header}\n{line}");
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            [
                "1048576",
                "262144",
                "float",
                "sum",
                "-1",
                "1234.50",
                "0.849",
                "0.849",
                "1200.00",
                "1500.25",
                "0",
                "double_binary_tree",
                "262144",
                "1100.00"
            ]
        );
        assert_eq!(row.csv().split(',').count(), CSV_HEADER.split(',').count());
        assert!(row.csv().contains(",sum,,"), "{}", row.csv());
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&row).unwrap()).unwrap();
        assert_eq!(json["type"], "float");
        assert!(json["root"].is_null());
    }

    #[test]
    fn wrong_elements_are_counted_bit_for_bit() {
        assert_eq!(count_wrong(&[1.0f32, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0);
        assert_eq!(count_wrong(&[1.0f32, 2.5, 3.0], &[1.0, 2.0, 3.0]), 1);
        assert_eq!(count_wrong(&[0.0f32], &[-0.0]), 1);
        assert_eq!(count_wrong(&[1u8, 2], &[1, 2, 3]), 1);
    }

    /// Every collective over in-process ranks (threads): the checked call finds no wrong
    /// element, for a few types and ops.
    #[test]
    fn every_collective_checks_clean_in_process() {
        for n in [1, 2, 3] {
            for c in Collective::ALL {
                if c == Collective::SendRecv && n < 2 {
                    continue;
                }
                for (dtype, op) in [
                    (DType::F32, ReduceOp::Sum),
                    (DType::BF16, ReduceOp::Prod),
                    (DType::I8, ReduceOp::Avg),
                    (DType::U64, ReduceOp::Max),
                ] {
                    let plan = Plan {
                        collective: c,
                        dtype,
                        redop: op,
                        root: n - 1,
                        sizes: vec![],
                        iters: 2,
                        warmup: 1,
                        check: true,
                        format: Format::Table,
                    };
                    let comms = Communicator::in_process(n, tutti::Config::default()).unwrap();
                    let wrong: Vec<u64> = std::thread::scope(|s| {
                        let hs: Vec<_> = comms
                            .iter()
                            .map(|comm| {
                                let plan = &plan;
                                s.spawn(move || {
                                    let count = 13;
                                    let times = match dtype {
                                        DType::F32 => time_size::<f32>(comm, plan, count),
                                        DType::BF16 => time_size::<bf16>(comm, plan, count),
                                        DType::I8 => time_size::<i8>(comm, plan, count),
                                        _ => time_size::<u64>(comm, plan, count),
                                    }
                                    .unwrap();
                                    assert_eq!(times.len(), 2);
                                    match dtype {
                                        DType::F32 => check_once::<f32>(comm, plan, count),
                                        DType::BF16 => check_once::<bf16>(comm, plan, count),
                                        DType::I8 => check_once::<i8>(comm, plan, count),
                                        _ => check_once::<u64>(comm, plan, count),
                                    }
                                    .unwrap()
                                })
                            })
                            .collect();
                        hs.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                    assert!(
                        wrong.iter().all(|&w| w == 0),
                        "{c:?} {dtype} {op} on {n}: {wrong:?}"
                    );
                }
            }
        }
    }
}
