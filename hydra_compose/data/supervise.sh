#!/usr/bin/env bash
# Runs llama-server and keeps it in step with its RPC workers (mounted into the
# master container as its entrypoint; arguments are llama-server's).
#
# Why: llama-server never reconnects to a worker. It aborts when a worker dies
# mid-generation, keeps a dead connection when a worker restarts while it is idle
# (the next request then aborts it), and hangs silently on a frozen worker.
#  - before every start: wait until every worker in --rpc accepts TCP connections
#  - llama-server exited: start it again (no container restart back-off)
#  - a worker connection of llama-server turns CLOSE_WAIT (the worker restarted):
#    restart llama-server before a user request hits the dead connection
#  - a slot is processing but no slot's n_decoded moved for STALL_S seconds while
#    /health is ok: generation is stuck on a frozen worker; mark the master
#    unhealthy (the healthcheck reads $STALL_FILE) until it moves again
set -u
STALL_S=${HYDRA_STALL_S:-15}
STALL_FILE=/tmp/hydra-stalled
SERVER=${HYDRA_SERVER_BIN:-/app/llama-server}

args=("$@")
rpc="" host=127.0.0.1 port=8080
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --rpc) rpc=${args[i + 1]} ;;
    --host) host=${args[i + 1]} ;;
    --port) port=${args[i + 1]} ;;
  esac
done
[ "$host" = 0.0.0.0 ] && host=127.0.0.1
IFS=, read -r -a workers <<<"$rpc"
url="http://$host:$port"
# The API key reaches curl through a 0600 header file, never its argv (ps shows argv to every user).
auth=()
if [ -n "${LLAMA_API_KEY:-}" ]; then
  auth_file=$(umask 077 && mktemp /tmp/hydra-auth.XXXXXX)
  printf 'Authorization: Bearer %s\n' "$LLAMA_API_KEY" >"$auth_file"
  auth=(-H "@$auth_file")
fi

log() { echo "hydra-supervise: $*" >&2; }

# Values only ever reach commands as quoted arguments; still, refuse anything that is
# not host:port before using it (hydra-compose generate validates them already).
for w in "${workers[@]}"; do
  if ! [[ "$w" =~ ^[A-Za-z0-9.-]+:[0-9]{1,5}$ ]]; then
    log "invalid worker endpoint in --rpc: refusing to start"
    exit 2
  fi
done

child=0
stop() {
  [ "$child" -gt 0 ] && kill -TERM "$child" 2>/dev/null && wait "$child"
  exit 0
}
trap stop TERM INT

# /proc/net/tcp spells ADDR:PORT as little-endian hex address, big-endian hex port.
# A DNS name is resolved first; one that does not resolve to IPv4 prints nothing.
tcp_hex() {
  local addr=${1%:*} port=${1##*:} a b c d
  if ! [[ "$addr" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    addr=$(getent ahostsv4 -- "$addr" 2>/dev/null | awk 'NR == 1 { print $1 }')
    [ -n "$addr" ] || return 0
  fi
  IFS=. read -r a b c d <<<"$addr"
  printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$port"
}

# States of llama-server's own sockets to a worker (01 established, 08 close-wait).
worker_states() {
  local inodes rem
  rem=$(tcp_hex "$1")
  if [ -z "$rem" ]; then echo unknown; return 0; fi  # unresolvable: no CLOSE_WAIT check for it
  inodes=$(find "/proc/$child/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' | paste -sd'|')
  [ -n "$inodes" ] || return 0
  awk -v rem="$rem" -v re="^($inodes)\$" '$3 == rem && $10 ~ re { print $4 }' /proc/net/tcp
}

wait_for_workers() {
  local w
  for w in "${workers[@]}"; do
    # bounded: a worker still serving a previous client leaves connects hanging.
    # Host and port are arguments of the probe, never part of its code.
    until timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' probe "${w%:*}" "${w##*:}" 2>/dev/null; do
      sleep 0.5
    done
  done
}

while true; do
  rm -f "$STALL_FILE"
  [ ${#workers[@]} -gt 0 ] && { log "waiting for workers ${rpc}"; wait_for_workers; }
  "$SERVER" "$@" &
  child=$!
  log "llama-server started (pid $child)"
  stalled_since=0 last_progress=""
  while kill -0 "$child" 2>/dev/null; do
    sleep 2
    if ! curl -fs -o /dev/null -m 2 "$url/health"; then
      continue  # loading, or exiting
    fi
    for w in "${workers[@]}"; do
      states=$(worker_states "$w")
      if [[ "$states" == *08* ]] || [ -z "$states" ]; then
        log "worker $w restarted or dropped its connection: restarting llama-server"
        kill -TERM "$child" 2>/dev/null
        break
      fi
    done
    slots=$(curl -fs -m 4 "${auth[@]}" "$url/slots")
    busy=$(grep -o '"is_processing":true' <<<"$slots" | wc -l)
    progress="$busy $(grep -o '"n_decoded":[0-9]*' <<<"$slots" | tr '\n' ' ')"
    now=$(date +%s)
    if [ -z "$slots" ] || { [ "$busy" -gt 0 ] && [ "$progress" = "${last_progress:-}" ]; }; then
      [ "$stalled_since" -eq 0 ] && stalled_since=$now
      if [ $((now - stalled_since)) -ge "$STALL_S" ] && [ ! -e "$STALL_FILE" ]; then
        log "generation stalled for ${STALL_S}s (a worker is frozen or unreachable): marking unhealthy"
        date +%s >"$STALL_FILE"
      fi
    else
      [ -e "$STALL_FILE" ] && log "generation moves again"
      stalled_since=0
      rm -f "$STALL_FILE"
    fi
    last_progress=$progress
  done
  wait "$child"
  log "llama-server exited with status $?: restarting once every worker accepts connections"
  child=0
  sleep 1
done
