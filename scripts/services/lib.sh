# shellcheck shell=bash
# Helpers shared by scripts/services/*.sh. Sourced, never run.
#
# Layout (all under the repository's gitignored .cache/):
#   .cache/services/<instance>/        state directory of one set of services ("default" unless
#                                      CHATD_SERVICES_INSTANCE names another)
#   .cache/services/<instance>/*.state shell-sourceable KEY=VALUE files written by the scripts
#   .cache/services.env                what env.sh writes for the test command to `source`

SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SERVICES_DIR/../.." && pwd)"
SERVICES_INSTANCE="${CHATD_SERVICES_INSTANCE:-default}"
if ! [[ "$SERVICES_INSTANCE" =~ ^[A-Za-z0-9_-]+$ ]]; then
  printf 'error: CHATD_SERVICES_INSTANCE must match [A-Za-z0-9_-]+ (got %q)\n' "$SERVICES_INSTANCE" >&2
  exit 2
fi
STATE_DIR="$REPO_ROOT/.cache/services/$SERVICES_INSTANCE"
SCRIPT_NAME="$(basename "${0:-services}" .sh)"

say() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() {
  printf '[%s] error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 1
}

# now_s: seconds since the epoch (integer).
now_s() { date +%s; }

# ensure_state_dir: creates the state directory.
ensure_state_dir() { mkdir -p "$STATE_DIR"; }

# take_lock NAME [SECONDS]: serializes concurrent runs of the same script on fd 9.
# Children that outlive the script must be started with `9>&-` so they don't keep the lock.
take_lock() {
  local name="$1" wait_s="${2:-900}"
  ensure_state_dir
  exec 9>"$STATE_DIR/$name.lock"
  if ! flock -w "$wait_s" 9; then
    die "another '$name' operation holds $STATE_DIR/$name.lock for more than ${wait_s}s"
  fi
}

# as_root CMD...: runs a command as root (directly, or through password-less sudo).
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "root is needed to run: $* (run it by hand as root, then retry)"
  fi
}

_APT_UPDATED=0
# apt_install PACKAGE...: installs Debian packages non-interactively, running
# `apt-get update` once per script run first. Services that a package would start (e.g. the
# system redis-server on port 6379) are kept from starting with a temporary policy-rc.d.
apt_install() {
  command -v apt-get >/dev/null 2>&1 \
    || die "apt-get not found: install $* by hand (this script only knows Debian/Ubuntu)"
  local policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
  export DEBIAN_FRONTEND=noninteractive
  # One apt operation at a time across our scripts (dpkg has its own lock too, but failing on it
  # would be pointless when the other holder is our own sibling script).
  exec 8>/tmp/chatd-services-apt.lock
  flock -w 900 8 || die "timed out waiting for /tmp/chatd-services-apt.lock"
  if [ ! -e "$policy" ]; then
    if as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"; then
      added_policy=1
    fi
  fi
  if [ "$_APT_UPDATED" = 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || rc=$?
    _APT_UPDATED=1
  fi
  if [ "$rc" = 0 ]; then
    say "apt-get install -y $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >&2 || rc=$?
  fi
  if [ "$added_policy" = 1 ]; then as_root rm -f "$policy" || true; fi
  exec 8>&-
  [ "$rc" = 0 ] || die "installing $* with apt-get failed (exit $rc)"
}

# port_is_free PORT: true when nothing can be reached or bound on 127.0.0.1:PORT.
port_is_free() {
  local port="$1"
  # Something listening answers a connect: taken.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    return 1
  fi
  if command -v python3 >/dev/null 2>&1; then
    # A listener on 0.0.0.0 or one not answering yet fails a bind. SO_REUSEADDR, as the
    # servers themselves set it, so that connections of a stopped server still in TIME_WAIT
    # (Cassandra's node-to-itself ones, say) don't count as "taken".
    python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
    return $?
  fi
  return 0
}

# pick_free_port [EXCLUDED...]: prints a free loopback TCP port outside the kernel's ephemeral
# range (so an outgoing connection can't grab it between our check and the server's bind, nor
# after a pause while the server is down), different from the EXCLUDED ones.
pick_free_port() {
  local lo=32768 hi=60999 range_lo range_hi port tries excluded x
  if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range || true
  fi
  if [ "$lo" -gt 12000 ]; then
    range_lo=10000 range_hi=$((lo - 1))
  else
    range_lo=$((hi + 1)) range_hi=65000
  fi
  if [ "$range_hi" -le "$range_lo" ]; then range_lo=20000 range_hi=30000; fi
  for tries in $(seq 1 200); do
    port="$(shuf -i "$range_lo-$range_hi" -n 1)"
    excluded=0
    for x in "$@"; do [ "$x" = "$port" ] && excluded=1; done
    [ "$excluded" = 1 ] && continue
    if port_is_free "$port"; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  die "no free loopback port found in $range_lo-$range_hi after $tries tries"
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive PID: true when the process exists and is not a finished zombie. (A killed JVM's
# main thread turns zombie while its other threads are still exiting and its sockets still
# open: that still counts as alive.)
pid_alive() {
  local pid="$1" st threads
  [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 1
  st="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
  threads="$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
  [ -n "$st" ] || return 1
  [ "$st" != Z ] || [ "${threads:-0}" -gt 1 ]
}

# wait_ports_free SECONDS PORT...: waits until every PORT is free; false on time-out.
wait_ports_free() {
  local secs="$1" deadline p busy
  shift
  deadline=$(($(date +%s) + secs))
  while :; do
    busy=""
    for p in "$@"; do port_is_free "$p" || busy="$p"; done
    [ -z "$busy" ] && return 0
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

# pid_has_marker PID MARKER: true when the process's command line contains MARKER.
pid_has_marker() {
  local pid="$1" marker="$2"
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# write_state FILE KEY=VALUE...: writes a shell-sourceable state file atomically.
write_state() {
  local file="$1" kv
  shift
  ensure_state_dir
  {
    printf '# written by scripts/services/%s.sh on %s; sourceable by bash\n' "$SCRIPT_NAME" "$(date -u +%FT%TZ)"
    for kv in "$@"; do
      printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
  } >"$file.tmp.$$"
  mv -f "$file.tmp.$$" "$file"
}

# log_tail FILE [LINES]: prints the end of a log to stderr, framed.
log_tail() {
  local file="$1" lines="${2:-60}"
  if [ -s "$file" ]; then
    printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" >&2
    printf -- '----- end of %s -----\n' "$file" >&2
  else
    printf -- '(%s is empty or missing)\n' "$file" >&2
  fi
}
