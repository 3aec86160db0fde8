#!/usr/bin/env bash
# A throw-away three-master Redis Cluster for the tests (router.redis_mode = "cluster"), from
# Debian's redis-server (>= 7 for sharded pub/sub), on free loopback ports. No Docker.
#
#   scripts/services/redis-cluster.sh start   install redis-server if missing, start three
#                                             cluster-enabled redis-servers (no persistence),
#                                             join them with `redis-cli --cluster create`
#                                             (no replicas), wait for cluster_state:ok, print
#                                             the seed URLs (comma-separated); idempotent
#   scripts/services/redis-cluster.sh stop    shut all three down and forget them (safe when
#                                             not running)
#   scripts/services/redis-cluster.sh status  running/stopped and the ports; exit 0 if healthy
#   scripts/services/redis-cluster.sh urls    prints the seed URLs (exit 1 without state)
#
# State: .cache/services/<instance>/redis-cluster.state (REDIS_CLUSTER_PORTS,
# REDIS_CLUSTER_BUS_PORTS, REDIS_CLUSTER_URLS, REDIS_CLUSTER_PIDS, REDIS_CLUSTER_DIR); data and
# logs under .cache/services/<instance>/redis-cluster/<port>/.
set -euo pipefail
# shellcheck source=scripts/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RC_STATE_FILE="$STATE_DIR/redis-cluster.state"
RC_RUN_DIR="$STATE_DIR/redis-cluster"
RC_START_TIMEOUT="${CHATD_REDIS_START_TIMEOUT:-30}"
RC_MASTERS=3

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

ensure_redis_installed() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if [ -x /usr/bin/redis-server ] && [ -x /usr/bin/redis-cli ]; then
      export PATH="/usr/bin:$PATH"
    else
      say "redis-server/redis-cli not found: installing Debian's redis-server package"
      apt_install redis-server redis-tools
    fi
  fi
  local major
  major="$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')"
  [ -n "$major" ] && [ "$major" -ge 7 ] \
    || die "redis-server >= 7 is needed for sharded pub/sub (found $(redis-server --version))"
}

rc_cli() { # PORT ARGS...
  local port="$1"
  shift
  timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null
}

load_state() {
  REDIS_CLUSTER_PORTS="" REDIS_CLUSTER_BUS_PORTS="" REDIS_CLUSTER_PIDS=""
  if [ -f "$RC_STATE_FILE" ]; then
    # shellcheck disable=SC1090
    source "$RC_STATE_FILE"
  fi
}

urls_of() { # PORTS (space-separated)
  local p out=""
  for p in $1; do out="${out:+$out,}redis://127.0.0.1:$p"; done
  printf '%s\n' "$out"
}

healthy() { # PORTS
  local p
  [ -n "$1" ] || return 1
  for p in $1; do
    rc_cli "$p" cluster info | tr -d '\r' | grep -qx 'cluster_state:ok' || return 1
  done
}

# shutdown_all PORTS PIDS: stops our servers and waits until their ports are closed.
shutdown_all() {
  local ports="$1" pids="$2" p pid _
  for p in $ports; do
    if [ "$(rc_cli "$p" ping || true)" = PONG ]; then
      rc_cli "$p" shutdown nosave >/dev/null || true
    fi
  done
  for p in $ports; do
    for _ in $(seq 1 100); do
      port_open "$p" || break
      sleep 0.1
    done
  done
  for pid in $pids; do
    if pid_alive "$pid" && grep -q redis "/proc/$pid/comm" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for p in $ports; do
    if port_open "$p"; then die "something still listens on 127.0.0.1:$p after shutdown"; fi
  done
}

# launch PORT BUSPORT: starts one cluster-enabled redis-server and waits for PING.
launch() {
  local port="$1" bus="$2" dir="$RC_RUN_DIR/$1" deadline
  rm -rf "$dir"
  mkdir -p "$dir"
  redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 \
    --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
    --cluster-node-timeout 5000 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --loglevel notice </dev/null >/dev/null 2>&1 9>&- || {
    log_tail "$dir/redis.log" 20
    return 1
  }
  deadline=$(($(now_s) + RC_START_TIMEOUT))
  while [ "$(now_s)" -lt "$deadline" ]; do
    [ "$(rc_cli "$port" ping || true)" = PONG ] && return 0
    sleep 0.1
  done
  log_tail "$dir/redis.log" 30
  return 1
}

cmd_start() {
  take_lock redis-cluster
  load_state
  ensure_redis_installed
  if healthy "$REDIS_CLUSTER_PORTS"; then
    say "already running on ports $REDIS_CLUSTER_PORTS"
    urls_of "$REDIS_CLUSTER_PORTS"
    return 0
  fi
  if [ -n "$REDIS_CLUSTER_PORTS" ]; then
    say "stale state (ports $REDIS_CLUSTER_PORTS not healthy): cleaning up"
    shutdown_all "$REDIS_CLUSTER_PORTS" "$REDIS_CLUSTER_PIDS" || true
    rm -f "$RC_STATE_FILE"
  fi
  # Data ports and cluster-bus ports, all distinct and outside the ephemeral range.
  local taken=() ports=() buses=() pids=() i p
  for i in $(seq 1 "$RC_MASTERS"); do
    p="$(pick_free_port "${taken[@]}")"
    taken+=("$p")
    ports+=("$p")
    p="$(pick_free_port "${taken[@]}")"
    taken+=("$p")
    buses+=("$p")
  done
  trap 'shutdown_all "${ports[*]}" "" || true' ERR
  for i in "${!ports[@]}"; do
    launch "${ports[$i]}" "${buses[$i]}" || die "redis-server on port ${ports[$i]} did not start"
    pids+=("$(cat "$RC_RUN_DIR/${ports[$i]}/redis.pid" 2>/dev/null || true)")
  done
  local nodes=()
  for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
  timeout 60 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$RC_RUN_DIR/create.log" 2>&1 || {
    log_tail "$RC_RUN_DIR/create.log" 30
    die "redis-cli --cluster create failed"
  }
  local deadline=$(($(now_s) + RC_START_TIMEOUT))
  until healthy "${ports[*]}"; do
    [ "$(now_s)" -lt "$deadline" ] || die "cluster not ok within ${RC_START_TIMEOUT}s"
    sleep 0.2
  done
  trap - ERR
  write_state "$RC_STATE_FILE" \
    "REDIS_CLUSTER_PORTS=${ports[*]}" \
    "REDIS_CLUSTER_BUS_PORTS=${buses[*]}" \
    "REDIS_CLUSTER_URLS=$(urls_of "${ports[*]}")" \
    "REDIS_CLUSTER_PIDS=${pids[*]}" \
    "REDIS_CLUSTER_DIR=$RC_RUN_DIR"
  say "redis cluster ($RC_MASTERS masters) up on ports ${ports[*]} (bus ${buses[*]})"
  urls_of "${ports[*]}"
}

cmd_stop() {
  take_lock redis-cluster
  load_state
  if [ -z "$REDIS_CLUSTER_PORTS" ]; then
    say "not running (no state file)"
    return 0
  fi
  command -v redis-cli >/dev/null 2>&1 || export PATH="/usr/bin:$PATH"
  shutdown_all "$REDIS_CLUSTER_PORTS" "$REDIS_CLUSTER_PIDS"
  rm -f "$RC_STATE_FILE"
  rm -rf "$RC_RUN_DIR"
  say "stopped (ports $REDIS_CLUSTER_PORTS)"
}

cmd_status() {
  load_state
  if [ -z "$REDIS_CLUSTER_PORTS" ]; then
    echo "stopped"
    return 3
  fi
  command -v redis-cli >/dev/null 2>&1 || export PATH="/usr/bin:$PATH"
  if healthy "$REDIS_CLUSTER_PORTS"; then
    echo "running 127.0.0.1 ports $REDIS_CLUSTER_PORTS"
    return 0
  fi
  echo "unhealthy (cluster_state not ok) ports $REDIS_CLUSTER_PORTS"
  return 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  urls)
    load_state
    [ -n "$REDIS_CLUSTER_PORTS" ] || exit 1
    urls_of "$REDIS_CLUSTER_PORTS"
    ;;
  *) usage ;;
esac
