#!/bin/sh
# dptrain image entrypoint: `head`, `worker` or `coordinator`; anything else is exec'ed as is.
#
#   head         a Ray head node (GCS on port 6379); $RAY_HEAD_CPUS CPUs for training actors
#   worker       a Ray worker node joining $RAY_HEAD_ADDRESS with $RAY_WORKER_CPUS CPUs
#   coordinator  a zero-CPU Ray node joining $RAY_HEAD_ADDRESS, then `dptrain serve` on it
#
# Ray's token authentication is always on: every Ray node listens on all the container's
# interfaces, and anyone who reaches an unauthenticated Ray port can run code in the cluster.
# RAY_AUTH_TOKEN (or a file in RAY_AUTH_TOKEN_PATH) must be the same in every container.
set -eu

role="${1:-coordinator}"
case "$role" in
  head|worker|coordinator) ;;
  *) exec "$@" ;;
esac

# An empty variable means "not set" (compose passes unset ones as empty strings).
for v in DPTRAIN_TOKEN DPTRAIN_TLS_CERT DPTRAIN_TLS_KEY DPTRAIN_TLS_CA DPTRAIN_METRICS_PORT RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH \
         OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do
  eval "[ -n \"\${$v:-}\" ] || unset $v"
done
if [ "${RAY_AUTH_MODE:-token}" != token ]; then
  echo "dptrain: RAY_AUTH_MODE must be 'token' (or unset): Ray's token authentication cannot be" \
       "turned off in this image" >&2
  exit 64
fi
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  echo "dptrain: Ray's token authentication needs RAY_AUTH_TOKEN (the same value for every container)," \
       "e.g. RAY_AUTH_TOKEN=\$(openssl rand -hex 32)" >&2
  exit 64
fi
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

head_address="${RAY_HEAD_ADDRESS:-ray-head:6379}"

# Flags every Ray node gets.
set -- --disable-usage-stats
[ -n "${RAY_OBJECT_STORE_MEMORY:-}" ] && set -- "$@" --object-store-memory="$RAY_OBJECT_STORE_MEMORY"
[ -n "${RAY_NODE_IP_ADDRESS:-}" ] && set -- "$@" --node-ip-address="$RAY_NODE_IP_ADDRESS"
[ -n "${RAY_MIN_WORKER_PORT:-}" ] && set -- "$@" --min-worker-port="$RAY_MIN_WORKER_PORT"
[ -n "${RAY_MAX_WORKER_PORT:-}" ] && set -- "$@" --max-worker-port="$RAY_MAX_WORKER_PORT"
[ -n "${RAY_AGENT_PORT:-}" ] && set -- "$@" --dashboard-agent-listen-port="$RAY_AGENT_PORT"

wait_for_head() {
  # `ray start --address` gives up quickly; the head may still be starting.
  host="${head_address%:*}"; port="${head_address##*:}"
  i=0
  until python -c "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()" \
        "$host" "$port" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -ge "${RAY_HEAD_WAIT_S:-120}" ]; then
      echo "dptrain: Ray head $head_address unreachable after ${RAY_HEAD_WAIT_S:-120}s" >&2
      exit 69
    fi
    sleep 1
  done
}

case "$role" in
  head)
    exec ray start --head --port=6379 --num-cpus="${RAY_HEAD_CPUS:-0}" \
      --include-dashboard=false "$@" --block
    ;;
  worker)
    wait_for_head
    cpus=""
    [ -n "${RAY_WORKER_CPUS:-}" ] && cpus="--num-cpus=$RAY_WORKER_CPUS"
    # shellcheck disable=SC2086
    exec ray start --address="$head_address" $cpus "$@" --block
    ;;
  coordinator)
    wait_for_head
    # A zero-CPU node: the coordinator's driver runs here, training actors never do.
    start_log="${TMPDIR:-/tmp}/ray-start.log"
    ray start --address="$head_address" --num-cpus=0 "$@" >"$start_log" 2>&1 \
      || { cat "$start_log" >&2; exit 70; }
    if [ -z "${DPTRAIN_TOKEN:-}" ]; then
      echo "dptrain: DPTRAIN_TOKEN is not set: the server generates a bearer token and prints it below" >&2
    fi
    export DPTRAIN_RAY_ADDRESS="${DPTRAIN_RAY_ADDRESS:-auto}"
    # All the container's interfaces: Docker publishes the ports on the host's loopback
    # (DPTRAIN_BIND, DPTRAIN_METRICS_BIND); a container-loopback port could not be published.
    exec dptrain serve --host "${DPTRAIN_HOST:-0.0.0.0}" --port "${DPTRAIN_PORT:-50051}" \
      --metrics-port "${DPTRAIN_METRICS_PORT:-9100}" --metrics-host "${DPTRAIN_METRICS_HOST:-0.0.0.0}"
    ;;
esac
