#!/usr/bin/env bash
# Coverage-guided fuzzing of the decoders of what arrives from the network (issue 14): the frame
# header, the mesh handshake's hello and the store protocol (targets in fuzz/, checks in
# crates/tutti/src/fuzzing.rs), with AFL++ through cargo-afl on the stable toolchain.
#
#   bash scripts/fuzz.sh [SECONDS]     total time, shared equally by the targets (default 60)
#
# Installs what is missing (cargo-afl from crates.io, then AFL++ built from the source it ships:
# about 2.5 minutes on a fresh machine; a second run installs nothing), builds the targets with
# overflow checks, runs each from the seeds of tutti::fuzzing::seeds, and prints per target the
# executions, the paths found and the crashes and hangs. Exits non-zero if any target crashed or
# hung (the inputs are kept in fuzz/out/<target>/default/{crashes,hangs}) or if the fuzzer
# could not run at all.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-60}
targets=(frame_header mesh_hello store_message)
per=$(( total / ${#targets[@]} ))
[ "$per" -ge 1 ] || per=1
afl_version=0.18.2

if ! cargo afl --version >/dev/null 2>&1; then
  echo "== installing cargo-afl $afl_version"
  cargo install cargo-afl --locked --version "$afl_version"
fi
# AFL++ itself, built once per toolchain; "already built" is fine.
if ! out=$(cargo afl config --build 2>&1); then
  if ! grep -q "already built" <<<"$out"; then
    echo "$out" >&2
    echo "cannot build AFL++ (cargo afl config --build)" >&2
    exit 1
  fi
fi

echo "== building the fuzz targets"
(cd fuzz && cargo afl build --release --locked --quiet)
rm -rf fuzz/out fuzz/seeds && mkdir -p fuzz/out
fuzz/target/release/write_seeds fuzz/seeds

# This machine's core_pattern pipes cores to a handler, and its cores are shared: tell AFL++ not
# to mind either, and not to draw its screen.
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1
export AFL_QUIET=1

status=0
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${per}s"
  # -V bounds the fuzzing; timeout(1) bounds start-up and calibration too.
  if ! timeout $((per + 120)) cargo afl fuzz -V "$per" -i "fuzz/seeds/$t" -o "fuzz/out/$t" \
      "fuzz/target/release/$t" >"fuzz/out-$t.log" 2>&1; then
    tail -20 "fuzz/out-$t.log" >&2
    echo "afl-fuzz could not run $t" >&2
    status=1
    continue
  fi
  stats="fuzz/out/$t/default/fuzzer_stats"
  get() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$stats"; }
  execs=$(get execs_done); paths=$(get corpus_count); crashes=$(get saved_crashes); hangs=$(get saved_hangs)
  echo "fuzz $t: ${execs} executions, ${paths} paths in the corpus, ${crashes} crashes, ${hangs} hangs"
  if [ "${crashes:-1}" != 0 ] || [ "${hangs:-1}" != 0 ]; then
    status=1
    for f in fuzz/out/"$t"/default/crashes/id* fuzz/out/"$t"/default/hangs/id*; do
      [ -e "$f" ] || continue
      echo "  $f:"; od -A d -t x1 "$f" | head -8
    done
  fi
done
rm -f fuzz/out-*.log
exit $status
