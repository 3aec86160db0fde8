#!/usr/bin/env bash
# A throw-away single-node Apache Cassandra 5.0 (the CQL database standing in for ScyllaDB) for
# the tests, on free loopback ports. See docs/TEST-SERVICES.md.
#
#   scripts/services/cassandra.sh start    fetch Cassandra from Maven Central if not cached, start
#                                          one node with its data in a temp dir, wait for CQL
#   scripts/services/cassandra.sh stop     stop the node and delete its data (safe when stopped)
#   scripts/services/cassandra.sh pause    stop the node, keep ports and data (DB "down")
#   scripts/services/cassandra.sh resume   start it again on the same ports with the same data
#   scripts/services/cassandra.sh status   running/paused/stopped + CQL address; exit 0 if running
#   scripts/services/cassandra.sh port     prints the CQL port (exit 1 when there is no state)
#   scripts/services/cassandra.sh query 'CQL'  runs one CQL statement (no driver needed)
#   scripts/services/cassandra.sh fetch    only download/cache the jars
#
# State: .cache/services/<instance>/cassandra.state (CASSANDRA_CQL_PORT, CASSANDRA_CQL,
# CASSANDRA_PID, CASSANDRA_STATE, CASSANDRA_DATA_DIR, CASSANDRA_LOG, ...).
# Knobs: CHATD_CASSANDRA_VERSION (5.0.8), CHATD_CASSANDRA_HEAP (2G),
# CHATD_CASSANDRA_START_TIMEOUT (180 s), CHATD_CASSANDRA_STOP_TIMEOUT (60 s),
# CHATD_CASSANDRA_PAUSE_SIGNAL (TERM; KILL for an abrupt crash), CHATD_CACHE_DIR
# (~/.cache/chatd), CHATD_SERVICES_INSTANCE (default), CHATD_SERVICES_TMPDIR ($TMPDIR or /tmp).
set -euo pipefail
# shellcheck source=scripts/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CASSANDRA_VERSION_WANTED="${CHATD_CASSANDRA_VERSION:-5.0.8}"
HEAP="${CHATD_CASSANDRA_HEAP:-2G}"
# Cassandra mlockall()s its memory at start-up (as root nothing stops it), which makes whatever
# heap is committed by then resident for good: start small, let G1 grow it up to $HEAP.
HEAP_MIN="${CHATD_CASSANDRA_HEAP_MIN:-256M}"
EXTRA_JVM_OPTS="${CHATD_CASSANDRA_JVM_OPTS:-}"
START_TIMEOUT="${CHATD_CASSANDRA_START_TIMEOUT:-180}"
STOP_TIMEOUT="${CHATD_CASSANDRA_STOP_TIMEOUT:-60}"
PAUSE_SIGNAL="${CHATD_CASSANDRA_PAUSE_SIGNAL:-TERM}"
CACHE_ROOT="${CHATD_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/chatd}"
LIB_DIR="$CACHE_ROOT/cassandra-$CASSANDRA_VERSION_WANTED/lib"
CONF_SRC="$SERVICES_DIR/cassandra"
STATE_FILE="$STATE_DIR/cassandra.state"
LOG_FILE="$STATE_DIR/cassandra.log"     # Cassandra's own log (logback)
OUT_FILE="$STATE_DIR/cassandra.out"     # the JVM's stdout/stderr
FETCH_LOG="$STATE_DIR/cassandra-fetch.log"
MARKER="-Dchatd.service=cassandra:$SERVICES_INSTANCE"
JAVA_BIN=""

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Prerequisites: Java 17, Maven, the jars.

java_major() { # JAVA -> major version number (17, 21, ...)
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -n 1
}

find_java17() {
  local c
  for c in ${CHATD_CASSANDRA_JAVA:+"$CHATD_CASSANDRA_JAVA"} ${JAVA_HOME:+"$JAVA_HOME/bin/java"} \
    "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/java-17-openjdk-*/bin/java \
    /usr/lib/jvm/*-17-*/bin/java /usr/lib/jvm/*17*/bin/java; do
    if [ -n "$c" ] && [ -x "$c" ] && [ "$(java_major "$c")" = 17 ]; then
      printf '%s\n' "$c"
      return 0
    fi
  done
  return 1
}

ensure_java() {
  [ -n "$JAVA_BIN" ] && return 0
  if ! JAVA_BIN="$(find_java17)"; then
    say "no Java 17 found (Cassandra 5.0 runs on Java 11 or 17; this script uses 17): installing openjdk-17-jre-headless"
    apt_install openjdk-17-jre-headless
    JAVA_BIN="$(find_java17)" || die "Java 17 still not found after installing openjdk-17-jre-headless; set CHATD_CASSANDRA_JAVA=/path/to/java17"
  fi
}

ensure_maven() {
  command -v mvn >/dev/null 2>&1 && return 0
  say "mvn not found: installing Debian's maven package"
  apt_install maven
  command -v mvn >/dev/null 2>&1 || die "mvn still not on PATH after installing maven"
}

jars_ready() {
  [ -f "$LIB_DIR/.complete" ] && [ -f "$LIB_DIR/cassandra-all-$CASSANDRA_VERSION_WANTED.jar" ] \
    && compgen -G "$LIB_DIR/jamm-*.jar" >/dev/null
}

# ensure_jars: cassandra-all and its runtime dependencies, from Maven Central (through ~/.m2),
# copied once into $LIB_DIR. Concurrent callers wait for one download.
ensure_jars() {
  jars_ready && return 0
  mkdir -p "$CACHE_ROOT"
  exec 7>"$CACHE_ROOT/cassandra-$CASSANDRA_VERSION_WANTED.lock"
  flock -w 1200 7 || die "timed out waiting for another download of Cassandra to finish"
  if jars_ready; then exec 7>&-; return 0; fi
  ensure_java
  ensure_maven
  ensure_state_dir
  local work attempt ok=0
  work="$(mktemp -d "$CACHE_ROOT/.cassandra-$CASSANDRA_VERSION_WANTED.XXXXXX")"
  cp "$CONF_SRC/pom.xml" "$work/pom.xml"
  say "fetching org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION_WANTED and its runtime dependencies with Maven (log: $FETCH_LOG)"
  : >"$FETCH_LOG"
  for attempt in 1 2; do
    if (cd "$work" && JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$JAVA_BIN")")")" \
      timeout 1200 mvn -B -ntp -f "$work/pom.xml" \
      dependency:copy-dependencies -DincludeScope=runtime \
      "-DoutputDirectory=$work/lib" "-Dcassandra.version=$CASSANDRA_VERSION_WANTED" \
      </dev/null >>"$FETCH_LOG" 2>&1 7>&- 9>&-); then
      ok=1
      break
    fi
    say "Maven failed (attempt $attempt)"
    sleep 3
  done
  if [ "$ok" != 1 ]; then
    log_tail "$FETCH_LOG" 40
    rm -rf "$work"
    die "could not fetch Cassandra $CASSANDRA_VERSION_WANTED from Maven Central"
  fi
  [ -f "$work/lib/cassandra-all-$CASSANDRA_VERSION_WANTED.jar" ] || {
    rm -rf "$work"
    die "Maven succeeded but cassandra-all-$CASSANDRA_VERSION_WANTED.jar is not among the copied jars"
  }
  touch "$work/lib/.complete"
  rm -rf "$LIB_DIR"
  mkdir -p "$(dirname "$LIB_DIR")"
  mv "$work/lib" "$LIB_DIR"
  rm -rf "$work"
  exec 7>&-
  say "cached $(find "$LIB_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIB_DIR" | cut -f1)) in $LIB_DIR"
}

# ---------------------------------------------------------------------------------------------
# State.

load_state() {
  CASSANDRA_STATE="" CASSANDRA_PID="" CASSANDRA_CQL_PORT="" CASSANDRA_STORAGE_PORT=""
  CASSANDRA_JMX_PORT="" CASSANDRA_DATA_DIR=""
  if [ -f "$STATE_FILE" ]; then
    # shellcheck disable=SC1090
    source "$STATE_FILE"
  fi
}

save_state() { # STATE
  write_state "$STATE_FILE" \
    "CASSANDRA_STATE=$1" \
    "CASSANDRA_CQL_PORT=$CASSANDRA_CQL_PORT" \
    "CASSANDRA_CQL=127.0.0.1:$CASSANDRA_CQL_PORT" \
    "CASSANDRA_PID=$CASSANDRA_PID" \
    "CASSANDRA_STORAGE_PORT=$CASSANDRA_STORAGE_PORT" \
    "CASSANDRA_JMX_PORT=$CASSANDRA_JMX_PORT" \
    "CASSANDRA_DATA_DIR=$CASSANDRA_DATA_DIR" \
    "CASSANDRA_LOG=$LOG_FILE" \
    "CASSANDRA_OUT=$OUT_FILE" \
    "CASSANDRA_VERSION=$CASSANDRA_VERSION_WANTED" \
    "CASSANDRA_LIB_DIR=$LIB_DIR"
}

# ---------------------------------------------------------------------------------------------
# The node.

cql_ready() { # PORT -> 0 when a STARTUP + SELECT round trip succeeds
  local port="$1"
  port_open "$port" || return 1
  if command -v python3 >/dev/null 2>&1; then
    python3 "$CONF_SRC/cql_ping.py" 127.0.0.1 "$port" 5 >/dev/null 2>&1
  else
    # No python: accept the port plus Cassandra's own "ready" log line.
    grep -q 'Startup complete' "$LOG_FILE" 2>/dev/null
  fi
}

render_config() { # DATA_DIR
  local dir="$1"
  mkdir -p "$dir/conf" "$dir/storage" "$dir/triggers"
  sed -e "s|@CQL_PORT@|$CASSANDRA_CQL_PORT|g" \
    -e "s|@STORAGE_PORT@|$CASSANDRA_STORAGE_PORT|g" \
    -e "s|@STORAGE_DIR@|$dir/storage|g" \
    "$CONF_SRC/cassandra.yaml.in" >"$dir/conf/cassandra.yaml"
}

jvm_args() { # prints the JVM arguments, NUL-separated
  local line jamm
  jamm="$(compgen -G "$LIB_DIR/jamm-*.jar" | head -n 1)"
  local args=("$MARKER" "-Xms$HEAP_MIN" "-Xmx$HEAP")
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%%#*}"
    # shellcheck disable=SC2206 # "--add-opens X" is two words on purpose
    [ -n "${line// /}" ] && args+=($line)
  done <"$CONF_SRC/jvm17-server.options"
  args+=(
    "-javaagent:$jamm"
    "-Dcassandra.config=file://$CASSANDRA_DATA_DIR/conf/cassandra.yaml"
    "-Dcassandra-foreground=yes"
    "-Dcassandra.storagedir=$CASSANDRA_DATA_DIR/storage"
    "-Dcassandra.logdir=$STATE_DIR"
    "-Dlogback.configurationFile=file://$CONF_SRC/logback.xml"
    "-Dchatd.cassandra.logfile=$LOG_FILE"
    "-Dcassandra.skip_wait_for_gossip_to_settle=0"
    "-Dcassandra.shutdown_announce_in_ms=0"
    "-Dcassandra.jmx.local.port=$CASSANDRA_JMX_PORT"
    "-Djava.rmi.server.hostname=127.0.0.1"
    "-Dcom.sun.management.jmxremote.authenticate=false"
    "-Dcassandra.triggers_dir=$CASSANDRA_DATA_DIR/triggers"
  )
  # shellcheck disable=SC2206 # word splitting wanted: a space-separated list of flags
  [ -n "$EXTRA_JVM_OPTS" ] && args+=($EXTRA_JVM_OPTS)
  args+=(
    -cp "$LIB_DIR/*"
    org.apache.cassandra.service.CassandraDaemon
  )
  printf '%s\0' "${args[@]}"
}

LAUNCHED_PID=""
# launch: starts the JVM in the background (own session, no inherited stdio or locks) and
# sets CASSANDRA_PID.
launch() {
  local args=() a
  while IFS= read -r -d '' a; do args+=("$a"); done < <(jvm_args)
  : >>"$LOG_FILE"
  : >>"$OUT_FILE"
  LOG_MARK="$(wc -l <"$LOG_FILE")"
  OUT_MARK="$(wc -l <"$OUT_FILE")"
  printf '\n===== %s: starting (CQL %s, storage %s, JMX %s, data %s)\n' "$(date -u +%FT%TZ)" \
    "$CASSANDRA_CQL_PORT" "$CASSANDRA_STORAGE_PORT" "$CASSANDRA_JMX_PORT" "$CASSANDRA_DATA_DIR" >>"$OUT_FILE"
  rm -f "$CASSANDRA_DATA_DIR/pid"
  # The inner shell records its own pid and then becomes java (exec), so the pid is the JVM's.
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c 'cd "$1" && echo $$ > "$1/pid" && shift && exec "$@"' _ \
    "$CASSANDRA_DATA_DIR" "$JAVA_BIN" "${args[@]}" </dev/null >>"$OUT_FILE" 2>&1 7>&- 8>&- 9>&- &
  disown "$!" 2>/dev/null || true # no "Killed" job notice if we have to kill it
  local _
  for _ in $(seq 1 50); do
    [ -s "$CASSANDRA_DATA_DIR/pid" ] && break
    sleep 0.1
  done
  CASSANDRA_PID="$(cat "$CASSANDRA_DATA_DIR/pid" 2>/dev/null || true)"
  [ -n "$CASSANDRA_PID" ] || die "the JVM did not start (see $OUT_FILE)"
  LAUNCHED_PID="$CASSANDRA_PID"
}

LOG_MARK=0
OUT_MARK=0
new_log_lines() { tail -n +"$((LOG_MARK + 1))" "$LOG_FILE" 2>/dev/null || true; }

# fail_tails: the end of what this start wrote to the Cassandra log and the JVM's output.
fail_tails() {
  printf -- '----- last 60 lines this start wrote to %s -----\n' "$LOG_FILE" >&2
  new_log_lines | tail -n 60 >&2
  printf -- '----- last 20 lines this start wrote to %s (JVM stdout/stderr) -----\n' "$OUT_FILE" >&2
  tail -n +"$((OUT_MARK + 1))" "$OUT_FILE" 2>/dev/null | tail -n 20 >&2 || true
  printf -- '----- end -----\n' >&2
}

# wait_ready: returns 0 when CQL answers, 3 when a port was taken, 1 on any other failure.
wait_ready() {
  local t0 deadline
  t0="$(now_s)"
  deadline=$((t0 + START_TIMEOUT))
  while :; do
    if ! pid_alive "$CASSANDRA_PID"; then
      if new_log_lines | grep -q 'Address already in use'; then
        return 3
      fi
      say "the Cassandra JVM (pid $CASSANDRA_PID) exited during start-up"
      fail_tails
      return 1
    fi
    if cql_ready "$CASSANDRA_CQL_PORT"; then
      say "CQL answers on 127.0.0.1:$CASSANDRA_CQL_PORT after $(($(now_s) - t0))s (pid $CASSANDRA_PID)"
      return 0
    fi
    if [ "$(now_s)" -ge "$deadline" ]; then
      say "Cassandra did not serve CQL on 127.0.0.1:$CASSANDRA_CQL_PORT within ${START_TIMEOUT}s"
      fail_tails
      return 1
    fi
    sleep 1
  done
}

# stop_jvm PID SIGNAL: stops our JVM (checked by its marker), waits until it is gone.
stop_jvm() {
  local pid="$1" sig="${2:-TERM}" t0
  [ -n "$pid" ] && pid_alive "$pid" || return 0
  if ! pid_has_marker "$pid" "$MARKER"; then
    say "pid $pid is not our Cassandra any more; not touching it"
    return 0
  fi
  kill "-$sig" "$pid" 2>/dev/null || true
  t0="$(now_s)"
  while pid_alive "$pid"; do
    if [ $(($(now_s) - t0)) -ge "$STOP_TIMEOUT" ]; then
      say "pid $pid still alive ${STOP_TIMEOUT}s after SIG$sig: killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      t0="$(now_s)"
    fi
    sleep 0.2
  done
  # Its sockets close with its last thread; make "stopped" mean "ports released".
  wait_ports_free 10 ${CASSANDRA_CQL_PORT:+"$CASSANDRA_CQL_PORT"} || true
}

# On a failed start/resume: stop what this run started (and, for a fresh start, its data).
FRESH_DATA_DIR=""
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    if [ -n "$LAUNCHED_PID" ] && pid_alive "$LAUNCHED_PID"; then
      say "start failed: stopping the JVM it started (pid $LAUNCHED_PID)"
      STOP_TIMEOUT=15 stop_jvm "$LAUNCHED_PID" KILL || true
    fi
    if [ -n "$FRESH_DATA_DIR" ]; then
      rm -rf "$FRESH_DATA_DIR"
      rm -f "$STATE_FILE"
    fi
  fi
  exit "$rc"
}

pick_ports() {
  CASSANDRA_CQL_PORT="$(pick_free_port)"
  CASSANDRA_STORAGE_PORT="$(pick_free_port "$CASSANDRA_CQL_PORT")"
  CASSANDRA_JMX_PORT="$(pick_free_port "$CASSANDRA_CQL_PORT" "$CASSANDRA_STORAGE_PORT")"
}

cmd_start() {
  take_lock cassandra
  load_state
  if [ "$CASSANDRA_STATE" = running ] && pid_alive "$CASSANDRA_PID" \
    && pid_has_marker "$CASSANDRA_PID" "$MARKER" && cql_ready "$CASSANDRA_CQL_PORT"; then
    say "already running: CQL on 127.0.0.1:$CASSANDRA_CQL_PORT (pid $CASSANDRA_PID)"
    echo "127.0.0.1:$CASSANDRA_CQL_PORT"
    return 0
  fi
  if [ "$CASSANDRA_STATE" = paused ] && [ -d "$CASSANDRA_DATA_DIR" ]; then
    say "was paused: resuming it"
    resume_locked
    return 0
  fi
  if [ -n "$CASSANDRA_STATE" ]; then
    say "stale state ($CASSANDRA_STATE, pid ${CASSANDRA_PID:-none}): cleaning up"
    stop_jvm "$CASSANDRA_PID" KILL
    [ -n "$CASSANDRA_DATA_DIR" ] && rm -rf "$CASSANDRA_DATA_DIR"
    rm -f "$STATE_FILE"
  fi

  ensure_java
  ensure_jars
  trap on_exit EXIT
  local attempt rc tmp_root
  tmp_root="${CHATD_SERVICES_TMPDIR:-${TMPDIR:-/tmp}}"
  for attempt in 1 2 3; do
    pick_ports
    CASSANDRA_DATA_DIR="$(mktemp -d "$tmp_root/chatd-cassandra-$SERVICES_INSTANCE.XXXXXX")"
    FRESH_DATA_DIR="$CASSANDRA_DATA_DIR"
    render_config "$CASSANDRA_DATA_DIR"
    say "starting Cassandra $CASSANDRA_VERSION_WANTED (CQL port $CASSANDRA_CQL_PORT, data $CASSANDRA_DATA_DIR, log $LOG_FILE)"
    launch
    rc=0
    wait_ready || rc=$?
    if [ "$rc" = 0 ]; then
      save_state running
      FRESH_DATA_DIR=""
      LAUNCHED_PID=""
      echo "127.0.0.1:$CASSANDRA_CQL_PORT"
      return 0
    fi
    stop_jvm "$CASSANDRA_PID" KILL
    LAUNCHED_PID=""
    rm -rf "$CASSANDRA_DATA_DIR"
    FRESH_DATA_DIR=""
    [ "$rc" = 3 ] || die "Cassandra failed to start (log: $LOG_FILE)"
    say "a port was taken meanwhile; retrying with other ports (attempt $attempt)"
  done
  die "could not start Cassandra on free ports after 3 attempts"
}

resume_locked() {
  [ -d "$CASSANDRA_DATA_DIR" ] || die "data directory $CASSANDRA_DATA_DIR is gone; run '$0 stop' then '$0 start'"
  if [ "$CASSANDRA_STATE" = running ] && pid_alive "$CASSANDRA_PID" && pid_has_marker "$CASSANDRA_PID" "$MARKER"; then
    say "already running (pid $CASSANDRA_PID)"
  else
    ensure_java
    ensure_jars
    trap on_exit EXIT
    # (A JVM that was just killed may still hold them for a moment.)
    wait_ports_free 20 "$CASSANDRA_CQL_PORT" "$CASSANDRA_STORAGE_PORT" "$CASSANDRA_JMX_PORT" \
      || die "one of the ports $CASSANDRA_CQL_PORT/$CASSANDRA_STORAGE_PORT/$CASSANDRA_JMX_PORT is taken by another process; cannot resume on the same ports"
    render_config "$CASSANDRA_DATA_DIR"
    say "resuming Cassandra on CQL port $CASSANDRA_CQL_PORT with data $CASSANDRA_DATA_DIR"
    launch
    save_state paused # until it answers, with the new pid, so a failed resume can be retried/stopped
    local rc=0
    wait_ready || rc=$?
    [ "$rc" = 0 ] || die "Cassandra failed to resume (log: $LOG_FILE)"
  fi
  save_state running
  LAUNCHED_PID=""
  echo "127.0.0.1:$CASSANDRA_CQL_PORT"
}

cmd_resume() {
  take_lock cassandra
  load_state
  [ -n "$CASSANDRA_STATE" ] || die "not started (no $STATE_FILE): run '$0 start' first"
  resume_locked
}

cmd_pause() {
  take_lock cassandra
  load_state
  [ -n "$CASSANDRA_STATE" ] || die "not started (no $STATE_FILE): run '$0 start' first"
  local t0
  t0="$(now_s)"
  stop_jvm "$CASSANDRA_PID" "$PAUSE_SIGNAL"
  CASSANDRA_PID=""
  save_state paused
  say "paused after $(($(now_s) - t0))s (SIG$PAUSE_SIGNAL): nothing listens on 127.0.0.1:$CASSANDRA_CQL_PORT until '$0 resume'"
}

cmd_stop() {
  take_lock cassandra
  load_state
  if [ -z "$CASSANDRA_STATE" ]; then
    say "not running (no state file)"
    return 0
  fi
  # The data goes away with it, so nothing to flush: SIGKILL (a graceful stop takes ~5 s).
  stop_jvm "$CASSANDRA_PID" KILL
  if [ -n "$CASSANDRA_DATA_DIR" ] && [[ "$CASSANDRA_DATA_DIR" == */chatd-cassandra-* ]]; then
    rm -rf "$CASSANDRA_DATA_DIR"
  fi
  rm -f "$STATE_FILE"
  say "stopped (CQL port $CASSANDRA_CQL_PORT); data removed"
}

cmd_status() {
  load_state
  if [ -z "$CASSANDRA_STATE" ]; then
    echo "stopped"
    return 3
  fi
  if [ "$CASSANDRA_STATE" = paused ]; then
    echo "paused 127.0.0.1:$CASSANDRA_CQL_PORT (data $CASSANDRA_DATA_DIR)"
    return 3
  fi
  if pid_alive "$CASSANDRA_PID" && cql_ready "$CASSANDRA_CQL_PORT"; then
    echo "running 127.0.0.1:$CASSANDRA_CQL_PORT pid $CASSANDRA_PID"
    return 0
  fi
  if pid_alive "$CASSANDRA_PID"; then
    echo "starting or unresponsive 127.0.0.1:$CASSANDRA_CQL_PORT pid $CASSANDRA_PID"
  else
    echo "dead (pid $CASSANDRA_PID gone) 127.0.0.1:$CASSANDRA_CQL_PORT; see $LOG_FILE"
  fi
  return 1
}

cmd_port() {
  load_state
  [ -n "$CASSANDRA_CQL_PORT" ] || return 1
  echo "$CASSANDRA_CQL_PORT"
}

cmd_query() { # CQL
  [ $# -ge 1 ] || die "usage: $0 query 'CQL statement'"
  load_state
  [ -n "$CASSANDRA_CQL_PORT" ] || die "not started"
  python3 "$CONF_SRC/cql_ping.py" 127.0.0.1 "$CASSANDRA_CQL_PORT" 30 "$1"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  pause) cmd_pause ;;
  resume) cmd_resume ;;
  status) cmd_status ;;
  port) cmd_port ;;
  query)
    shift
    cmd_query "$@"
    ;;
  fetch)
    ensure_java
    ensure_jars
    echo "$LIB_DIR"
    ;;
  *) usage ;;
esac
