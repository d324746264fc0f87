#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, unit and property tests,
# multi-process tests through `tutti launch` (shared memory, then again with TCP forced), and
# (when the machine allows network namespaces) multi-host tests on ../shared/netlab.
set -euo pipefail
cd "$(dirname "$0")/.."

# iproute2 is needed by the multi-host tests (netlab); install it when missing and possible.
if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing iproute2 (for the netlab multi-host tests)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2) >/dev/null 2>&1 \
    || echo "   could not install iproute2: the netlab tests will report themselves skipped"
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test (unit, property, in-process, multi-process, multi-host on netlab)"
# Tests that cannot run here (netlab needs root and namespaces) record themselves in this file.
skipped_file=target/tmp/skipped.txt
mkdir -p target/tmp && rm -f "$skipped_file"
cargo test --workspace --locked 2>&1 | tee target/test-output.txt

# The multi-process and transport suites again with every link on TCP (the default run moves
# the links between ranks of one host to shared memory).
echo "== the multi-process and transport tests again with TUTTI_TRANSPORT=tcp"
TUTTI_TRANSPORT=tcp cargo test --locked -p tutti --test tcp_transport --test large_messages \
  -p tutti-cli --test multiprocess --test launch --test bench 2>&1 | tee -a target/test-output.txt

# The Python binding: the README's one pip command builds the extension (maturin, release) into
# a venv under target/ with numpy and pytest, then pytest runs python/tests (every op and dtype
# on 1-4 processes through python -m tutti.launch, errors, the launcher). torch is an optional
# extra that this script does not install: its test reports itself skipped.
echo "== Python binding: pip install . into target/pyvenv, then pytest python/tests"
py_start=$(date +%s)
py_rc=0
venv=target/pyvenv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check numpy pytest
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps .
"$venv/bin/python" -m pytest python/tests -q -rs -p no:cacheprovider 2>&1 | tee target/pytest-output.txt \
  || py_rc=$?
py_summary=$(tail -n 1 target/pytest-output.txt)
py_count() { { echo "$py_summary" | grep -Eo "[0-9]+ $1" || true; } | awk '{s+=$1} END {print s+0}'; }
py_passed=$(py_count passed)
py_failed=$(( $(py_count failed) + $(py_count error) ))
py_skipped=$(py_count skipped)
if [ "$py_rc" != 0 ] && [ "$py_failed" = 0 ]; then
  py_failed=1 # pytest failed without a count (e.g. exit 5: no test collected)
fi
echo "== Python binding: ${py_passed} passed, ${py_failed} failed, ${py_skipped} skipped in $(( $(date +%s) - py_start )) s (build included)"

# A short, bounded coverage-guided fuzzing run of the network decoders (AFL++ via cargo-afl,
# installed by the script when missing: about 2.5 minutes the first time, plus building the
# targets). TUTTI_FUZZ_SECONDS=0 leaves it out (a developer's quick run); CI runs it.
fuzz_seconds=${TUTTI_FUZZ_SECONDS:-60}
if [ "$fuzz_seconds" != 0 ]; then
  echo "== fuzzing the decoders for ${fuzz_seconds}s (scripts/fuzz.sh)"
  bash scripts/fuzz.sh "$fuzz_seconds" 2>&1 | tee target/fuzz-output.txt
fi

passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' target/test-output.txt | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
ignored=$(grep -Eo '[0-9]+ ignored' target/test-output.txt | awk '{s+=$1} END {print s+0}')
skipped=0
if [ -s "$skipped_file" ]; then
  skipped=$(wc -l <"$skipped_file")
  echo "skipped (counted as neither passed nor failed):"
  sed 's/^/  /' "$skipped_file"
fi
echo "tests: $((passed - skipped + py_passed)) passed, $((failed + py_failed)) failed, $((skipped + py_skipped)) skipped (${ignored} ignored)"
[ "$py_rc" = 0 ]
