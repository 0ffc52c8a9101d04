#!/usr/bin/env bash
# Runs llama-server and keeps it in step with its RPC workers (mounted into the
# master container as its entrypoint; arguments are llama-server's).
#
# Why: llama-server never reconnects to a worker. It aborts when a worker dies
# mid-generation, keeps a dead connection when a worker restarts while it is idle
# (the next request then aborts it), and hangs silently on a frozen worker.
#  - before every start: wait until every worker in --rpc accepts TCP connections;
#    when some stay unreachable for FAILOVER_S, start the best fallback plan whose
#    workers all answer (files in $FALLBACK_DIR, written by generate: a description
#    line, then one llama-server argument per line - data, never shell)
#  - serving a fallback: when the missing workers have answered for FAILBACK_S and
#    no slot is busy, restart llama-server on the full plan
#  - llama-server exited: start it again (no container restart back-off)
#  - a worker connection of llama-server turns CLOSE_WAIT (the worker restarted):
#    restart llama-server before a user request hits the dead connection
#  - a slot is processing but no slot's n_decoded moved for STALL_S seconds while
#    /health is ok: generation is stuck on a frozen worker; mark the master
#    unhealthy (the healthcheck reads $STALL_FILE) until it moves again
set -u
STALL_S=${HYDRA_STALL_S:-15}
STALL_FILE=/tmp/hydra-stalled
MODE_FILE=/tmp/hydra-mode  # "full", "degraded: without HOST (...)" or "down: why" (read by status)
SERVER=${HYDRA_SERVER_BIN:-/app/llama-server}
FAILOVER_S=${HYDRA_FAILOVER_S:-30}
FAILBACK_S=${HYDRA_FAILBACK_S:-60}
FALLBACK_DIR=${HYDRA_FALLBACK_DIR:-/hydra/fallback}

# parse_args ARG...: the --rpc, --host and --port of one llama-server command line
parse_args() {
  local a=("$@") i
  rpc="" host=127.0.0.1 port=8080
  for ((i = 0; i < ${#a[@]}; i++)); do
    case "${a[i]}" in
      --rpc) rpc=${a[i + 1]} ;;
      --host) host=${a[i + 1]} ;;
      --port) port=${a[i + 1]} ;;
    esac
  done
  [ "$host" = 0.0.0.0 ] && host=127.0.0.1
  rpc_list=()
  [ -n "$rpc" ] && IFS=, read -r -a rpc_list <<<"$rpc"
  return 0
}
full_args=("$@")
parse_args "$@"
# Router mode (--models-preset, serve: several models): the router's children dial the workers, each
# with its section's --rpc; the router itself has none. Generate lists them all in HYDRA_RPC_WORKERS.
router=0
if [[ " $* " == *" --models-preset "* ]]; then
  router=1
  [ -n "${HYDRA_RPC_WORKERS:-}" ] && IFS=, read -r -a rpc_list <<<"$HYDRA_RPC_WORKERS"
fi
full_workers=("${rpc_list[@]}")
url="http://$host:$port"
# The API key reaches curl through a 0600 header file, never its argv (ps shows argv to every user).
# LLAMA_API_KEY may list several keys (the cluster's own first, then users'): the first is ours.
auth=()
if [ -n "${LLAMA_API_KEY:-}" ]; then
  auth_file=$(umask 077 && mktemp /tmp/hydra-auth.XXXXXX)
  printf 'Authorization: Bearer %s\n' "${LLAMA_API_KEY%%,*}" >"$auth_file"
  auth=(-H "@$auth_file")
fi

log() { echo "hydra-supervise: $*" >&2; }

# Values only ever reach commands as quoted arguments; still, refuse anything that is
# not host:port before using it (hydra-compose generate validates them already).
valid_endpoints() {
  local w
  for w in "$@"; do
    [[ "$w" =~ ^[A-Za-z0-9.-]+:[0-9]{1,5}$ ]] || return 1
  done
}
if ! valid_endpoints "${full_workers[@]}"; then
  log "invalid worker endpoint in --rpc: refusing to start"
  exit 2
fi

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

# States of llama-server's own sockets to a worker (01 established, 08 close-wait); in router mode
# those of the router's children (the loaded models).
worker_states() {
  local inodes rem pids=("$child") p
  rem=$(tcp_hex "$1")
  if [ -z "$rem" ]; then echo unknown; return 0; fi  # unresolvable: no CLOSE_WAIT check for it
  if [ "$router" = 1 ]; then  # children by their parent pid (field 4 of /proc/PID/stat)
    pids+=($(awk -v parent="$child" '$4 == parent { print $1 }' /proc/[0-9]*/stat 2>/dev/null))
  fi
  inodes=$(for p in "${pids[@]}"; do find "/proc/$p/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null; done |
    tr -dc '0-9\n' | paste -sd'|')
  [ -n "$inodes" ] || return 0
  awk -v rem="$rem" -v re="^($inodes)\$" '$3 == rem && $10 ~ re { print $4 }' /proc/net/tcp
}

# A worker answers the RPC HELLO command (command 14, 24 zero bytes of client capabilities: the
# reply's 8-byte size header arrives). Not a bare TCP connect: with rpc_tls the master dials its
# local TLS tunnel, which accepts even while the worker behind it is gone. Bounded: a worker still
# serving a previous client leaves the request hanging. Host and port are arguments of the probe,
# never part of its code.
reachable() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "\x0e\x18\0\0\0\0\0\0\0" >&3 &&
    head -c 24 /dev/zero >&3 && [ "$(head -c 8 <&3 | wc -c)" = 8 ]' probe "${1%:*}" "${1##*:}" 2>/dev/null
}

# choose_plan: waits until every worker of the full plan answers, or, after FAILOVER_S,
# until a fallback plan's workers all do; sets args, workers and mode.
choose_plan() {
  local since w f lines down=() said=""
  since=$(date +%s)
  while true; do
    down=()
    for w in "${full_workers[@]}"; do reachable "$w" || down+=("$w"); done
    if [ ${#down[@]} -eq 0 ]; then
      args=("${full_args[@]}") workers=("${full_workers[@]}") mode=full
      echo full >"$MODE_FILE"
      return 0
    fi
    if [ $(($(date +%s) - since)) -ge "$FAILOVER_S" ]; then
      for f in "$FALLBACK_DIR"/*.args; do  # best predicted speed first
        [ -f "$f" ] || continue
        mapfile -t lines <"$f"
        parse_args "${lines[@]:1}"
        valid_endpoints "${rpc_list[@]}" || { log "ignoring $f: invalid worker endpoint"; continue; }
        for w in "${rpc_list[@]}"; do
          [[ " ${down[*]} " == *" $w "* ]] && continue 2
        done
        args=("${lines[@]:1}") workers=("${rpc_list[@]}") mode="degraded: ${lines[0]#\# }"
        log "workers ${down[*]} unreachable for ${FAILOVER_S}s: serving the fallback plan ${lines[0]#\# }"
        echo "$mode" >"$MODE_FILE"
        return 0
      done
      if [ -z "$said" ]; then
        said="down: workers ${down[*]} unreachable and no fallback plan runs without them"
        for f in "$FALLBACK_DIR"/*.nofit; do
          [ -f "$f" ] && said+="; $(head -c 300 "$f" | tr -d '\n')"
        done
        log "$said"
        echo "$said" >"$MODE_FILE"
      fi
    fi
    sleep 1
  done
}

while true; do
  rm -f "$STALL_FILE"
  [ ${#full_workers[@]} -gt 0 ] && log "waiting for workers ${full_workers[*]}"
  choose_plan
  "$SERVER" "${args[@]}" &
  child=$!
  log "llama-server started (pid $child, plan: $mode)"
  stalled_since=0 last_progress="" back_since=0
  while kill -0 "$child" 2>/dev/null; do
    sleep 2
    if ! curl -fs -o /dev/null -m 2 "$url/health"; then
      continue  # loading, or exiting
    fi
    for w in "${workers[@]}"; do
      states=$(worker_states "$w")
      # no socket at all: the worker dropped it (a router's model may just be unloaded)
      if [[ "$states" == *08* ]] || { [ -z "$states" ] && [ "$router" = 0 ]; }; then
        log "worker $w restarted or dropped its connection: restarting llama-server"
        kill -TERM "$child" 2>/dev/null
        break
      fi
    done
    [ "$router" = 1 ] && continue  # its /slots is per model: no stall check (and no fallback plans)
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
    if [ "$mode" != full ]; then  # the lost workers back for FAILBACK_S and nobody served: full plan again
      back=1
      for w in "${full_workers[@]}"; do
        [[ " ${workers[*]} " == *" $w "* ]] || reachable "$w" || { back=0; break; }
      done
      if [ "$back" -eq 0 ]; then
        back_since=0
      elif [ "$back_since" -eq 0 ]; then
        back_since=$now
      elif [ $((now - back_since)) -ge "$FAILBACK_S" ] && [ "$busy" -eq 0 ]; then
        log "every worker answered for ${FAILBACK_S}s: back to the full plan"
        kill -TERM "$child" 2>/dev/null
      fi
    fi
  done
  wait "$child"
  log "llama-server exited with status $?: restarting once its workers accept connections"
  child=0
  sleep 1
done
