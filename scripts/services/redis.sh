#!/usr/bin/env bash
# A throw-away Redis for the tests, on a free loopback port. See docs/TEST-SERVICES.md.
#
#   scripts/services/redis.sh start    install redis-server if missing (Debian), start our own
#                                      redis-server (no persistence), wait for PING, write state
#   scripts/services/redis.sh stop     shut it down and forget it (safe when not running)
#   scripts/services/redis.sh pause    shut it down but keep the port (a "Redis restart", part 1)
#   scripts/services/redis.sh resume   start it again on the same port (part 2; empty dataset)
#   scripts/services/redis.sh restart  pause + resume
#   scripts/services/redis.sh status   prints running/paused/stopped and the port; exit 0 if running
#   scripts/services/redis.sh port     prints the port (exit 1 when there is no state)
#
# State: .cache/services/<instance>/redis.state (REDIS_PORT, REDIS_URL, REDIS_PID, REDIS_STATE,
# REDIS_DIR, REDIS_LOG). The instance is "default" unless CHATD_SERVICES_INSTANCE says otherwise.
set -euo pipefail
# shellcheck source=scripts/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REDIS_STATE_FILE="$STATE_DIR/redis.state"
REDIS_RUN_DIR="$STATE_DIR/redis"
REDIS_LOG_FILE="$STATE_DIR/redis.log"
REDIS_START_TIMEOUT="${CHATD_REDIS_START_TIMEOUT:-20}"

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

ensure_redis_installed() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  # Debian puts them in /usr/bin; a PATH without it would only need the directory.
  if [ -x /usr/bin/redis-server ] && [ -x /usr/bin/redis-cli ]; then
    export PATH="/usr/bin:$PATH"
    return 0
  fi
  say "redis-server/redis-cli not found: installing Debian's redis-server package"
  apt_install redis-server redis-tools
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after install"
  command -v redis-cli >/dev/null 2>&1 || die "redis-cli still not on PATH after install"
}

redis_ping() { # PORT
  [ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null || true)" = PONG ]
}

load_state() {
  REDIS_PORT="" REDIS_PID="" REDIS_STATE=""
  if [ -f "$REDIS_STATE_FILE" ]; then
    # shellcheck disable=SC1090
    source "$REDIS_STATE_FILE"
  fi
}

save_state() { # STATE
  write_state "$REDIS_STATE_FILE" \
    "REDIS_STATE=$1" \
    "REDIS_PORT=$REDIS_PORT" \
    "REDIS_URL=redis://127.0.0.1:$REDIS_PORT" \
    "REDIS_PID=$REDIS_PID" \
    "REDIS_DIR=$REDIS_RUN_DIR" \
    "REDIS_LOG=$REDIS_LOG_FILE"
}

# The flags every start uses. A test that restarts Redis by itself can use the same line:
#   redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
redis_args() { # PORT
  local args=(--port "$1" --bind 127.0.0.1 --save '' --appendonly no
    --dir "$REDIS_RUN_DIR" --daemonize yes --pidfile "$REDIS_RUN_DIR/redis.pid"
    --logfile "$REDIS_LOG_FILE" --loglevel notice)
  # Redis >= 7 keeps DEBUG (e.g. DEBUG SLEEP, handy to simulate a stuck server) off by default.
  local major
  major="$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')"
  if [ -n "$major" ] && [ "$major" -ge 7 ]; then
    args+=(--enable-debug-command local)
  fi
  printf '%s\0' "${args[@]}"
}

# launch PORT: starts a daemonized redis-server and waits for PING. Returns 1 on failure, 3 when
# the port turned out to be taken.
launch() {
  local port="$1" deadline args=()
  mkdir -p "$REDIS_RUN_DIR"
  rm -f "$REDIS_RUN_DIR/redis.pid"
  while IFS= read -r -d '' a; do args+=("$a"); done < <(redis_args "$port")
  : >>"$REDIS_LOG_FILE"
  local log_lines
  log_lines="$(wc -l <"$REDIS_LOG_FILE")"
  if ! redis-server "${args[@]}" </dev/null >/dev/null 2>&1 9>&-; then
    log_tail "$REDIS_LOG_FILE" 20
    return 1
  fi
  deadline=$(($(now_s) + REDIS_START_TIMEOUT))
  while [ "$(now_s)" -lt "$deadline" ]; do
    if redis_ping "$port"; then
      REDIS_PID="$(cat "$REDIS_RUN_DIR/redis.pid" 2>/dev/null || true)"
      return 0
    fi
    if tail -n +"$((log_lines + 1))" "$REDIS_LOG_FILE" | grep -q 'Address already in use'; then
      return 3
    fi
    sleep 0.1
  done
  say "redis-server did not answer PING on port $port within ${REDIS_START_TIMEOUT}s"
  log_tail "$REDIS_LOG_FILE" 30
  return 1
}

# shutdown_port PORT: stops whatever redis answers there (ours), waits until the port is closed.
shutdown_port() {
  local port="$1" pid="${2:-}" _
  if redis_ping "$port"; then
    timeout 10 redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 100); do
    port_open "$port" || break
    sleep 0.1
  done
  # Fallback: our own pid (only if it still is a redis-server).
  if [ -n "$pid" ] && pid_alive "$pid" && grep -q redis "/proc/$pid/comm" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  if port_open "$port"; then
    die "something still listens on 127.0.0.1:$port after shutting Redis down"
  fi
}

cmd_start() {
  take_lock redis
  load_state
  ensure_redis_installed
  if [ -n "$REDIS_PORT" ] && [ "$REDIS_STATE" = running ] && redis_ping "$REDIS_PORT"; then
    say "already running on 127.0.0.1:$REDIS_PORT"
    echo "redis://127.0.0.1:$REDIS_PORT"
    return 0
  fi
  if [ -n "$REDIS_PORT" ] && [ "$REDIS_STATE" = paused ]; then
    say "was paused: resuming on its port"
    resume_locked
    return 0
  fi
  if [ -n "$REDIS_PORT" ]; then
    say "stale state (port $REDIS_PORT not answering): cleaning up"
    shutdown_port "$REDIS_PORT" "$REDIS_PID" || true
    rm -f "$REDIS_STATE_FILE"
  fi
  local attempt rc port
  for attempt in 1 2 3 4 5; do
    # shellcheck disable=SC2119 # no ports to exclude
    port="$(pick_free_port)"
    rc=0
    launch "$port" || rc=$?
    if [ "$rc" = 0 ]; then
      REDIS_PORT="$port"
      save_state running
      say "redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') up on 127.0.0.1:$port (pid ${REDIS_PID:-?})"
      echo "redis://127.0.0.1:$port"
      return 0
    fi
    # Anything that might have come up half-way goes down again.
    shutdown_port "$port" "$(cat "$REDIS_RUN_DIR/redis.pid" 2>/dev/null || true)" || true
    [ "$rc" = 3 ] || die "redis-server failed to start (log: $REDIS_LOG_FILE)"
    say "port $port was taken meanwhile; trying another (attempt $attempt)"
  done
  die "could not start redis-server on a free port after 5 attempts"
}

cmd_stop() {
  take_lock redis
  load_state
  if [ -z "$REDIS_PORT" ]; then
    say "not running (no state file)"
    return 0
  fi
  command -v redis-cli >/dev/null 2>&1 || export PATH="/usr/bin:$PATH"
  shutdown_port "$REDIS_PORT" "$REDIS_PID"
  rm -f "$REDIS_STATE_FILE"
  rm -rf "$REDIS_RUN_DIR"
  say "stopped (port $REDIS_PORT)"
}

cmd_pause() {
  take_lock redis
  load_state
  [ -n "$REDIS_PORT" ] || die "not started (no $REDIS_STATE_FILE): run '$0 start' first"
  shutdown_port "$REDIS_PORT" "$REDIS_PID"
  REDIS_PID=""
  save_state paused
  say "paused: nothing listens on 127.0.0.1:$REDIS_PORT until '$0 resume'"
}

resume_locked() {
  ensure_redis_installed
  if redis_ping "$REDIS_PORT"; then
    say "already answering on 127.0.0.1:$REDIS_PORT"
  else
    local rc=0
    launch "$REDIS_PORT" || rc=$?
    if [ "$rc" = 3 ]; then
      die "port $REDIS_PORT is taken by another process; cannot resume on the same port"
    elif [ "$rc" != 0 ]; then
      die "redis-server failed to restart on port $REDIS_PORT (log: $REDIS_LOG_FILE)"
    fi
  fi
  save_state running
  say "resumed on 127.0.0.1:$REDIS_PORT (empty dataset)"
}

cmd_resume() {
  take_lock redis
  load_state
  [ -n "$REDIS_PORT" ] || die "not started (no $REDIS_STATE_FILE): run '$0 start' first"
  resume_locked
}

cmd_status() {
  load_state
  if [ -z "$REDIS_PORT" ]; then
    echo "stopped"
    return 3
  fi
  command -v redis-cli >/dev/null 2>&1 || export PATH="/usr/bin:$PATH"
  if redis_ping "$REDIS_PORT"; then
    echo "running 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  echo "${REDIS_STATE:-unknown} (not answering) 127.0.0.1:$REDIS_PORT"
  return 3
}

cmd_port() {
  load_state
  [ -n "$REDIS_PORT" ] || return 1
  echo "$REDIS_PORT"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  pause) cmd_pause ;;
  resume) cmd_resume ;;
  restart)
    "$0" pause
    "$0" resume
    ;;
  status) cmd_status ;;
  port) cmd_port ;;
  *) usage ;;
esac
