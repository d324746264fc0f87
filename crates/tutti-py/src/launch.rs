//! `python -m tutti.launch`: the launcher of `tutti launch` (crates/tutti-cli), run inside the
//! interpreter's process, so that `pip install` is all a Python user needs (no separate
//! binary to build or find) and the behaviour is the same code's. A program ending in `.py`
//! runs with the current interpreter, as torchrun does.

use clap::Parser;
use pyo3::prelude::*;
use std::ffi::OsString;
use std::path::Path;
use tutti_cli::launch::{exit_code, LaunchArgs};

/// Start N ranks of a Python script (with this interpreter) or of any program on this machine,
/// like torchrun --standalone or mpirun; the same launcher as `tutti launch`.
#[derive(Parser, Debug)]
#[command(name = "python -m tutti.launch")]
struct Cli {
    #[command(flatten)]
    args: LaunchArgs,
}

/// Runs the launcher with `argv` (without the program name) and returns its exit code.
/// `python` is the interpreter for `.py` programs. Must run before the process has other
/// threads (the launcher blocks its signals in every thread it starts).
#[pyfunction]
pub fn launch(py: Python<'_>, argv: Vec<OsString>, python: OsString) -> i32 {
    let cli = match Cli::try_parse_from(
        std::iter::once(OsString::from("python -m tutti.launch")).chain(argv),
    ) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let mut args = cli.args;
    let is_script = args
        .command
        .first()
        .is_some_and(|p| Path::new(p).extension().is_some_and(|e| e == "py"));
    if is_script {
        args.command.insert(0, python);
    }
    i32::from(py.detach(|| exit_code(&args)))
}
