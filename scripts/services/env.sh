#!/usr/bin/env bash
# Starts/stops every service the tests need and writes the file the test command sources.
# See docs/TEST-SERVICES.md.
#
#   scripts/services/env.sh start    start Redis, a three-master Redis Cluster and Cassandra (in
#                                    parallel, each installed or downloaded first if missing),
#                                    write .cache/services.env, print it
#   scripts/services/env.sh stop     stop all, remove .cache/services.env (safe when stopped)
#   scripts/services/env.sh status   status of all; exit 0 when all run
#   scripts/services/env.sh print    print .cache/services.env
#
# .cache/services.env (sourceable, every line an `export`):
#   CHATD_TEST_REDIS_URL=redis://127.0.0.1:PORT   CHATD_TEST_CQL=127.0.0.1:PORT
#   CHATD_TEST_REDIS_CLUSTER_URLS=redis://127.0.0.1:P1,redis://127.0.0.1:P2,redis://127.0.0.1:P3
#   CHATD_TEST_REDIS_PORT, CHATD_TEST_CQL_PORT, CHATD_TEST_SERVICES_DIR (this directory, to call
#   redis.sh/cassandra.sh pause|resume from a test), CHATD_SERVICES_INSTANCE
# With CHATD_SERVICES_INSTANCE=NAME (not "default") everything is separate and the file is
# .cache/services/NAME/services.env.
set -euo pipefail
# shellcheck source=scripts/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "$SERVICES_INSTANCE" = default ]; then
  ENV_FILE="$REPO_ROOT/.cache/services.env"
else
  ENV_FILE="$STATE_DIR/services.env"
fi
REDIS="$SERVICES_DIR/redis.sh"
REDIS_CLUSTER="$SERVICES_DIR/redis-cluster.sh"
CASSANDRA="$SERVICES_DIR/cassandra.sh"

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

STARTED_REDIS=0
STARTED_CASSANDRA=0
STARTED_REDIS_CLUSTER=0
on_start_exit() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    say "start failed: stopping what this run started"
    if [ "$STARTED_CASSANDRA" = 1 ]; then "$CASSANDRA" stop || true; fi
    if [ "$STARTED_REDIS" = 1 ]; then "$REDIS" stop || true; fi
    if [ "$STARTED_REDIS_CLUSTER" = 1 ]; then "$REDIS_CLUSTER" stop || true; fi
    rm -f "$ENV_FILE"
  fi
  exit "$rc"
}

cmd_start() {
  local t0 redis_was=0 cassandra_was=0 rc_r=0 rc_c=0 pid_r pid_c rc_k=0 pid_k
  t0="$(now_s)"
  "$REDIS" status >/dev/null 2>&1 && redis_was=1
  "$CASSANDRA" status >/dev/null 2>&1 && cassandra_was=1
  [ "$redis_was" = 1 ] || STARTED_REDIS=1
  [ "$cassandra_was" = 1 ] || STARTED_CASSANDRA=1
  "$REDIS_CLUSTER" status >/dev/null 2>&1 || STARTED_REDIS_CLUSTER=1
  trap on_start_exit EXIT

  # In parallel: Cassandra's JVM start-up dominates; Redis (and its apt install) fits inside it.
  "$CASSANDRA" start >/dev/null &
  pid_c=$!
  "$REDIS" start >/dev/null &
  pid_r=$!
  "$REDIS_CLUSTER" start >/dev/null &
  pid_k=$!
  wait "$pid_r" || rc_r=$?
  wait "$pid_k" || rc_k=$?
  wait "$pid_c" || rc_c=$?
  [ "$rc_r" = 0 ] || die "Redis did not start (exit $rc_r; see the messages above)"
  [ "$rc_c" = 0 ] || die "Cassandra did not start (exit $rc_c; see the messages above)"
  [ "$rc_k" = 0 ] || die "Redis Cluster did not start (exit $rc_k; see the messages above)"

  local redis_port cql_port cluster_urls
  redis_port="$("$REDIS" port)" || die "redis.sh left no state"
  cql_port="$("$CASSANDRA" port)" || die "cassandra.sh left no state"
  cluster_urls="$("$REDIS_CLUSTER" urls)" || die "redis-cluster.sh left no state"
  mkdir -p "$(dirname "$ENV_FILE")"
  {
    printf '# written by scripts/services/env.sh start on %s; source it\n' "$(date -u +%FT%TZ)"
    printf 'export CHATD_TEST_REDIS_URL=%q\n' "redis://127.0.0.1:$redis_port"
    printf 'export CHATD_TEST_CQL=%q\n' "127.0.0.1:$cql_port"
    printf 'export CHATD_TEST_REDIS_CLUSTER_URLS=%q\n' "$cluster_urls"
    printf 'export CHATD_TEST_REDIS_PORT=%q\n' "$redis_port"
    printf 'export CHATD_TEST_CQL_PORT=%q\n' "$cql_port"
    printf 'export CHATD_TEST_SERVICES_DIR=%q\n' "$SERVICES_DIR"
    printf 'export CHATD_SERVICES_INSTANCE=%q\n' "$SERVICES_INSTANCE"
  } >"$ENV_FILE.tmp.$$"
  mv -f "$ENV_FILE.tmp.$$" "$ENV_FILE"
  trap - EXIT
  say "services up in $(($(now_s) - t0))s; environment in $ENV_FILE:"
  cat "$ENV_FILE"
}

cmd_stop() {
  local rc=0
  "$CASSANDRA" stop || rc=1
  "$REDIS" stop || rc=1
  "$REDIS_CLUSTER" stop || rc=1
  rm -f "$ENV_FILE"
  return "$rc"
}

cmd_status() {
  local rc=0
  printf 'redis:     %s\n' "$("$REDIS" status 2>&1 || true)"
  "$REDIS" status >/dev/null 2>&1 || rc=3
  printf 'cassandra: %s\n' "$("$CASSANDRA" status 2>&1 || true)"
  "$CASSANDRA" status >/dev/null 2>&1 || rc=3
  printf 'redis cluster: %s\n' "$("$REDIS_CLUSTER" status 2>&1 || true)"
  "$REDIS_CLUSTER" status >/dev/null 2>&1 || rc=3
  return "$rc"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  print)
    [ -f "$ENV_FILE" ] || die "$ENV_FILE does not exist: run '$0 start'"
    cat "$ENV_FILE"
    ;;
  *) usage ;;
esac
