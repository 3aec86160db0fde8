#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for a bounded time: the last step of scripts/test.sh.
# A crash, panic, broken invariant or hang fails the script and leaves the input that
# triggered it in fuzz/artifacts/<target>/ (the path and a reproduce command are printed).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  per target (default: $FUZZ_SECONDS, else 15: six targets fit the CI budget)
#   TARGET   frame_json frame_msgpack moderation rules config session (default: all)
# Reproduce a finding:  cd fuzz && cargo +nightly fuzz run -s none --dev --features node <target> <artifact>
#
# Installs the nightly toolchain and cargo-fuzz when they are missing. Build choices (measured
# in the Fuzzing section of docs/SECURITY.md):
# - `--sanitizer none`: every crate of ours forbids unsafe code, so AddressSanitizer would
#   mostly slow the build and the runs (about 2x) looking for bugs the compiler already rules
#   out; panics, overflow checks (debug assertions stay on) and the targets' invariants are
#   what we look for.
# - `--dev` (with line tables only) by default: `config` and `session` link the whole gateway
#   (~330 crates), whose optimized, instrumented build alone takes longer than the CI budget
#   on 2 cores; one unoptimized build serves all six targets. FUZZ_RELEASE=1 builds optimized
#   instead, for long runs (several times more executions per second for the cheap targets).
# - the `node` feature (the gateway) only when `config` or `session` is selected.
# New corpus entries go to fuzz/target/corpus/<target>/ (not committed; for `session`, to a
# scratch directory removed afterwards); the committed seeds in fuzz/corpus/<target>/ are read
# only.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-${FUZZ_SECONDS:-15}}"
[ $# -gt 0 ] && shift
all=(frame_json frame_msgpack moderation rules config session)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

flags=(--sanitizer none)
[ -n "${FUZZ_RELEASE:-}" ] || flags+=(--dev)
# Line tables are enough for a panic's backtrace, and link much faster than full debug info.
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
for t in "${targets[@]}"; do
  case " ${all[*]} " in
    *" $t "*) ;;
    *) echo "unknown fuzz target: $t (known: ${all[*]})" >&2; exit 2 ;;
  esac
  case "$t" in
    config | session) node=1 ;;
  esac
done
[ -z "${node:-}" ] || flags+=(--features node)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz build: $(($(date +%s) - start)) s"

# Scratch space for the targets (the session node's store, rule and config files): on a RAM
# disk when there is one, removed afterwards.
scratch_root=/dev/shm
[ -d "$scratch_root" ] && [ -w "$scratch_root" ] || scratch_root="${TMPDIR:-/tmp}"
scratch=$(mktemp -d "$scratch_root/chatd-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
  echo "==> fuzz $t for ${secs} s"
  corpus="target/corpus/$t"
  opts=(-max_total_time="$secs" -timeout=120 -rss_limit_mb=4096 -print_final_stats=1)
  if [ "$t" = session ]; then
    # libFuzzer replays the whole corpus before the time limit counts, and the session
    # target's corpus grows with timing noise (see docs/SECURITY.md): start from the seeds
    # each time, so the run stays bounded.
    corpus="$scratch/corpus-$t"
    opts+=(-max_len=4096)
  fi
  mkdir -p "$corpus"
  if ! TMPDIR="$scratch" cargo +nightly fuzz run "${flags[@]}" "$t" \
      "$corpus" "corpus/$t" -- "${opts[@]}" 2>"target/fuzz-$t.log"; then
    failed+=("$t")
    tail -n 60 "target/fuzz-$t.log" >&2
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)|cov: ' \
    "target/fuzz-$t.log" | tail -n 5 || true
done

echo "fuzzing took $(($(date +%s) - start)) s in all"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/; logs in fuzz/target/fuzz-<target>.log)" >&2
  exit 1
fi
