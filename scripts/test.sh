#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, then every test against real
# services (a real chatd over WebSocket, and for cluster mode a real Redis and a real CQL
# database, which this script installs and starts when missing, and stops afterwards).
#
# Usage: scripts/test.sh            # everything
#        SKIP_SERVICES=1 scripts/test.sh   # without Redis/Cassandra (their tests then fail loudly)
#        FUZZ_SECONDS=60 scripts/test.sh   # fuzz each target longer (default 15 s); SKIP_FUZZ=1 skips
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
features=(--features gateway/test-hooks)
started_services=0

step() { printf '\n==> %s\n' "$*"; }

cleanup() {
  if [ "$started_services" = 1 ]; then
    step "stopping test services"
    scripts/services/env.sh stop || true
  fi
}
trap cleanup EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --locked --workspace --all-targets "${features[@]}" -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet

step "build the chatd binary the end-to-end tests start"
cargo build --locked -p gateway --bins "${features[@]}"

if [ -z "${SKIP_SERVICES:-}" ] && [ -x scripts/services/env.sh ]; then
  step "starting Redis, a Redis Cluster and the CQL database"
  started_services=1
  scripts/services/env.sh start
  # shellcheck disable=SC1091
  source .cache/services.env
  export CHATD_TEST_REDIS_URL CHATD_TEST_CQL CHATD_TEST_REDIS_CLUSTER_URLS
fi

step "cargo test (every crate, every test)"
cargo test --locked --workspace --no-fail-fast "${features[@]}" -- --include-ignored

step "web app and TypeScript SDK: npm ci, build check, Vitest + headless chromium (docs/WEB.md)"
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
npm ci --no-audit --no-fund
npm run -w web build
if ! git diff --exit-code --stat -- web/dist || [ -n "$(git status --porcelain -- web/dist)" ]; then
  echo "web/dist is not the build of web/ and clients/ts: run 'npm run -w web build' and commit web/dist" >&2
  exit 1
fi
npm test

if [ -z "${SKIP_FUZZ:-}" ]; then
  step "fuzzing: every cargo-fuzz target for ${FUZZ_SECONDS:-15} s (scripts/fuzz.sh)"
  scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
fi
