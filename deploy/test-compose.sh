#!/usr/bin/env bash
# End-to-end test of deploy/: build the image on a debootstrap-built base, bring the compose
# stack up with 2 Ray workers, train from the host over the published port, check the weights
# bitwise against the in-process reference loop, kill a worker container mid-job and check the
# job still ends bitwise-equal; then tear everything down and leave the machine as found.
#
#   sudo PYTHON=.venv/bin/python bash deploy/test-compose.sh
#
# Needs root, docker.io + docker-compose (1.29) + debootstrap (installed with apt-get when
# missing, unless DPTRAIN_COMPOSE_APT=0), no Docker daemon already running (this script starts
# its own, with its state under a temporary directory, and stops it by PID), and the Debian
# mirror and PyPI reachable. No image is pulled from any registry.
#
# Environment:
#   PYTHON                 the project's Python on the host (default: python3)
#   DEBIAN_MIRROR          for debootstrap (default http://deb.debian.org/debian)
#   DPTRAIN_EXTRA_CA_DIR   CA certificates (*.crt) for the image build (default
#                          /usr/local/share/ca-certificates: for networks that re-sign TLS)
#   DPTRAIN_PIN=0          do not pin the image's packages to the host Python's versions
#   KEEP_WORKDIR=1         keep the temporary directory (logs) after the run
#
# Every wait is bounded; a run takes 3-5 minutes on 2 cores (it prints the timings of each phase).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_DIR="${DPTRAIN_EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"

# The script's own output, for the EXIT trap: a trap that fires inside a redirected command
# (`run cmd >log`) would otherwise write into that log.
exec 3>&1 4>&2
T_START=$(date +%s.%N)
declare -a TIMINGS=()
phase_t0=""
since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN{printf "%.1f", a - b}'; }
log() { printf '[%6ss] %s\n' "$(since "$T_START")" "$*"; }
phase_begin() { phase_t0=$(date +%s.%N); log "== $1"; }
phase_end() {
  local dt; dt=$(since "$phase_t0")
  TIMINGS+=("$1=${dt}s"); log "== $1 done in ${dt}s"
}
die() { log "FAIL: $*"; exit 1; }
# Long commands run in the background while the script waits for them: a TERM or INT then
# interrupts the wait at once and the EXIT trap tears down (bash runs traps only between commands).
BG_PID=""
run() {
  "$@" &
  BG_PID=$!
  local rc=0
  wait "$BG_PID" || rc=$?
  BG_PID=""
  return "$rc"
}
stamp() { while IFS= read -r line; do printf '%s\t%s\n' "$(date +%s.%N)" "$line"; done; }

# --- preflight ----------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "test-compose.sh: run as root (it starts dockerd)" >&2; exit 2; }
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null \
   || ! command -v debootstrap >/dev/null || ! command -v iptables-save >/dev/null; then
  [ "${DPTRAIN_COMPOSE_APT:-1}" = 1 ] || { echo "test-compose.sh: needs docker.io docker-compose debootstrap" >&2; exit 2; }
  log "installing docker.io docker-compose debootstrap with apt-get"
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi
# Debian's client matches Debian's daemon (another docker client may be earlier in PATH).
DOCKER="$(command -v /usr/bin/docker || command -v docker)"
"$PYTHON" -c 'import dptrain.client, dptrain.core.trainer, yaml, numpy' \
  || { echo "test-compose.sh: PYTHON=$PYTHON cannot import the project" >&2; exit 2; }
CLI=("$PYTHON" -c "import sys; from dptrain.cli import main; sys.exit(main())")
if pid=$(pgrep -x dockerd); then
  echo "test-compose.sh: a dockerd is already running (pid $pid); this test starts and stops its own" >&2
  exit 2
fi

WORK="$(mktemp -d /var/tmp/dptrain-compose.XXXXXX)"
DOCKER_PID=""
STATUS=1

# --- what to restore ------------------------------------------------------------------------
BASE="$WORK/baseline"; mkdir -p "$BASE"
iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' > "$BASE/ipt4" || true
ip6tables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' > "$BASE/ipt6" || true
SYSCTLS="net/ipv4/ip_forward net/ipv6/conf/all/forwarding net/ipv6/conf/default/forwarding
  net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables"
for s in $SYSCTLS; do [ -r "/proc/sys/$s" ] && cat "/proc/sys/$s" > "$BASE/sysctl.${s//\//.}"; done
ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort > "$BASE/links"
# Paths dockerd/containerd may create even with their state elsewhere.
LEFT_PATHS="/etc/docker/key.json /etc/docker /var/lib/docker /var/lib/containerd /run/docker /run/containerd /var/run/docker.sock /root/.docker"
: > "$BASE/paths"
for p in $LEFT_PATHS; do [ -e "$p" ] || [ -L "$p" ] && echo "$p" >> "$BASE/paths"; done
ipt_backend="$(iptables --version 2>/dev/null | grep -o 'nf_tables' || true)"
log "baseline: ip_forward=$(cat /proc/sys/net/ipv4/ip_forward), iptables rules v4=$(grep -c '^-A' "$BASE/ipt4" || true)" \
    "v6=$(grep -c '^-A' "$BASE/ipt6" || true), links: $(tr '\n' ' ' < "$BASE/links")"

# Only this script's settings reach compose and the CLI.
unset DPTRAIN_BIND DPTRAIN_METRICS_BIND DPTRAIN_MAX_RUNNING_JOBS DPTRAIN_TLS_DIR DPTRAIN_TLS_CA \
  DPTRAIN_TLS_CA_IN_CONTAINER DPTRAIN_NETWORK DPTRAIN_ADDRESS RAY_HEAD_CPUS RAY_HEAD_ADDRESS RAY_ADDRESS \
  RAY_AUTH_MODE RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
export DOCKER_HOST="unix://$WORK/docker/docker.sock"
export DOCKER_CONFIG="$WORK/docker/client"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
export COMPOSE_PROJECT_NAME=dptraintest
export COLUMNS=200  # the CLI's tables, unabridged
CTX="$WORK/context"
COMPOSE=(docker-compose -f "$CTX/deploy/docker-compose.yml" --ansi never)
COMPOSE_UP=0

restore_iptables() {  # family: 4 or 6
  local save=iptables-save restore=iptables-restore ipt=iptables nftfam=ip base="$BASE/ipt$1"
  [ "$1" = 6 ] && save=ip6tables-save restore=ip6tables-restore ipt=ip6tables nftfam=ip6
  command -v "$save" >/dev/null || return 0
  local t
  for t in $($save 2>/dev/null | sed -n 's/^\*//p'); do
    if grep -qx "\*$t" "$base"; then
      # Replaces the whole table (rules, user chains, policies) with what was there before.
      awk -v t="*$t" '$0==t{on=1} on{print} on&&/^COMMIT/{exit}' "$base" | $restore -T "$t"
    else
      $ipt -t "$t" -F; $ipt -t "$t" -X
      local c
      for c in $($save -t "$t" | sed -n 's/^:\([A-Z]*\) [A-Z]*.*/\1/p'); do $ipt -t "$t" -P "$c" ACCEPT 2>/dev/null || true; done
      if [ -n "$ipt_backend" ] && command -v nft >/dev/null; then nft delete table "$nftfam" "$t" 2>/dev/null || true; fi
    fi
  done
}

normalized_rules() {  # stdin: iptables-save output; out: comparable form (empty tables = none)
  grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' \
    | awk '/^\*/{t=$0; n=0; buf=""; next}
           /^COMMIT/{ if (n) {print t; printf "%s", buf; print "COMMIT"}; next}
           /^:/{ buf=buf $0 "\n"; if ($2 != "ACCEPT" && $2 != "-") n++; next}
           { buf=buf $0 "\n"; n++ }'
}

cleanup() {
  local rc=$? ; set +e
  exec 1>&3 2>&4
  if [ -n "$BG_PID" ]; then kill -TERM "$BG_PID" 2>/dev/null; wait "$BG_PID" 2>/dev/null; fi
  [ "$STATUS" = 0 ] || [ "$rc" != 0 ] || rc=1
  if [ "$rc" != 0 ] && [ "$COMPOSE_UP" = 1 ]; then
    log "--- failure: last container logs"
    timeout 30 "${COMPOSE[@]}" logs --tail=60 2>&1 | tail -n 200
  fi
  phase_begin teardown
  if [ "$COMPOSE_UP" = 1 ]; then
    timeout 90 "${COMPOSE[@]}" down -v --remove-orphans -t 20 >"$WORK/down.log" 2>&1 || log "compose down failed"
  fi
  if [ -n "$DOCKER_PID" ] && kill -0 "$DOCKER_PID" 2>/dev/null; then
    kill -TERM "$DOCKER_PID"
    for _ in $(seq 1 60); do kill -0 "$DOCKER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DOCKER_PID" 2>/dev/null && { log "dockerd ignored SIGTERM: SIGKILL"; kill -KILL "$DOCKER_PID"; sleep 1; }
  fi
  # Anything still running from our state directory (managed containerd, shims): by PID.
  local p pids
  for _ in 1 2 3; do
    pids=""
    for p in /proc/[0-9]*; do
      [ "${p#/proc/}" = "$$" ] && continue
      tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -qF "$WORK/docker" && pids="$pids ${p#/proc/}"
    done
    [ -z "$pids" ] && break
    log "stopping leftover processes:$pids"
    # shellcheck disable=SC2086  # a list of PIDs
    { kill -TERM $pids; sleep 2; kill -KILL $pids; } 2>/dev/null
  done
  # Mounts under the state directory, deepest first.
  grep -F " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m"; done
  # Network: links dockerd created (docker0, the compose network's br-*, veth*).
  local l
  for l in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    grep -qx "$l" "$BASE/links" && continue
    case "$l" in docker0|br-*|veth*) ip link delete "$l" 2>/dev/null ;; esac
  done
  restore_iptables 4; restore_iptables 6
  local s f
  for s in $SYSCTLS; do
    f="$BASE/sysctl.${s//\//.}"
    [ -f "$f" ] && [ -w "/proc/sys/$s" ] && cat "$f" > "/proc/sys/$s"
  done
  for p in $LEFT_PATHS; do
    if ! grep -qx "$p" "$BASE/paths" && { [ -e "$p" ] || [ -L "$p" ]; }; then
      rm -rf "$p"
    fi
  done
  phase_end teardown

  # Check, and say, that the machine is as it was.
  local clean=1
  if [ -n "$DOCKER_PID" ] && kill -0 "$DOCKER_PID" 2>/dev/null; then log "NOT CLEAN: dockerd $DOCKER_PID alive"; clean=0; fi
  if ip link show docker0 >/dev/null 2>&1 && ! grep -qx docker0 "$BASE/links"; then log "NOT CLEAN: docker0 exists"; clean=0; fi
  if [ -d "$BASE" ]; then
    if ! diff <(cat "$BASE/links") <(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort) >/dev/null; then
      log "NOT CLEAN: network links differ from before"; clean=0
    fi
    for fam in 4 6; do
      local save=iptables-save; [ $fam = 6 ] && save=ip6tables-save
      command -v $save >/dev/null || continue
      if ! diff <(normalized_rules < "$BASE/ipt$fam") <($save 2>/dev/null | normalized_rules) >/dev/null; then
        log "NOT CLEAN: ip${fam/4/}tables differ from before:"
        diff <(normalized_rules < "$BASE/ipt$fam") <($save 2>/dev/null | normalized_rules) | head -20
        clean=0
      fi
    done
    for s in $SYSCTLS; do
      f="$BASE/sysctl.${s//\//.}"
      [ -f "$f" ] && [ "$(cat "/proc/sys/$s")" != "$(cat "$f")" ] && { log "NOT CLEAN: $s"; clean=0; }
    done
  fi
  log "machine state: dockerd stopped, ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)," \
      "docker0 $(ip link show docker0 >/dev/null 2>&1 && echo present || echo absent)," \
      "iptables rules v4=$(iptables-save 2>/dev/null | grep -c '^-A')" \
      "$([ "$clean" = 1 ] && echo '=> as before' || echo '=> NOT as before')"
  [ "$clean" = 1 ] || rc=1
  if [ "${KEEP_WORKDIR:-0}" = 1 ]; then log "kept $WORK"; else rm -rf --one-file-system "$WORK"; fi
  log "timings: ${TIMINGS[*]} total=$(since "$T_START")s"
  if [ "$rc" = 0 ]; then log "PASS"; else log "FAILED (rc=$rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- dockerd ---------------------------------------------------------------------------------
phase_begin dockerd
mkdir -p "$WORK/docker/root" "$WORK/docker/exec" "$DOCKER_CONFIG"
dockerd --data-root "$WORK/docker/root" --exec-root "$WORK/docker/exec" \
  --pidfile "$WORK/docker/dockerd.pid" -H "$DOCKER_HOST" >"$WORK/dockerd.log" 2>&1 3>&- 4>&- &
DOCKER_PID=$!
timeout 60 bash -c "until \"$DOCKER\" version >/dev/null 2>&1; do kill -0 $DOCKER_PID || exit 1; sleep 0.3; done" \
  || { tail -20 "$WORK/dockerd.log"; die "dockerd did not come up in 60s"; }
log "dockerd pid $DOCKER_PID, $("$DOCKER" version --format 'server {{.Server.Version}}')"
phase_end dockerd

# --- base image: debootstrap, no registry ------------------------------------------------------
phase_begin debootstrap
run timeout 300 debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb
tar -C "$WORK/rootfs" -c . | timeout 120 "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - dptrain-base:bookworm >/dev/null
rm -rf --one-file-system "$WORK/rootfs"
phase_end debootstrap

# --- the image, built by compose from a clean copy of the work tree -----------------------------
phase_begin build
mkdir -p "$CTX"
# Tracked and untracked-but-not-ignored files: no .venv, caches or local .env in the context.
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -co --exclude-standard -z \
     | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
     | tar --null -T - -c) | tar -C "$CTX" -x
else
  tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=.ci/venv --exclude='__pycache__' \
    --exclude='*.egg-info' --exclude=deploy/.env --exclude=deploy/.build -c . | tar -C "$CTX" -x
fi
mkdir -p "$CTX/deploy/.build/ca-certificates"
if ls "$CA_DIR"/*.crt >/dev/null 2>&1; then cp "$CA_DIR"/*.crt "$CTX/deploy/.build/ca-certificates/"; fi
if [ "${DPTRAIN_PIN:-1}" = 1 ]; then
  # Same numpy/scipy/... as the host: the expected weights are computed there.
  "$PYTHON" -m pip freeze 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==[^+ ]+$' > "$CTX/deploy/.build/constraints.txt" || true
fi
log "context: $(du -sh "$CTX" | cut -f1), $(ls "$CTX/deploy/.build/ca-certificates" | wc -l) extra CA cert(s)," \
    "$(wc -l < "$CTX/deploy/.build/constraints.txt" 2>/dev/null || echo 0) pinned packages"
export DPTRAIN_IMAGE=dptrain:compose-test DPTRAIN_BASE_IMAGE=dptrain-base:bookworm
# (timestamped: which step takes how long)
build_image() { timeout 600 "${COMPOSE[@]}" build coordinator 2>&1 | stamp >"$WORK/build.log"; return "${PIPESTATUS[0]}"; }
run build_image || { tail -40 "$WORK/build.log"; die "image build failed"; }
# The slow steps, from the timestamps.
awk -F'\t' -v end="$(date +%s.%N)" '$2 ~ /^Step [0-9]+\// {if (l != "") d[l] = $1 - p; p = $1; l = substr($2, 1, 80)}
  END {if (l != "") d[l] = end - p; for (k in d) if (d[k] >= 2) printf "   %5.1fs  %s\n", d[k], k}' "$WORK/build.log" | sort -k3,3V || true
log "image $DPTRAIN_IMAGE: $("$DOCKER" image inspect -f '{{.Size}}' "$DPTRAIN_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
phase_end build

# --- up --------------------------------------------------------------------------------------
phase_begin up
# Ray's token authentication cannot be left out or turned off.
refused() {  # ROLE ENV...: the entrypoint must exit 64 (configuration error) before starting Ray
  local role="$1" rc=0; shift
  timeout 60 "$DOCKER" run --rm --network none "$@" "$DPTRAIN_IMAGE" "$role" >"$WORK/refused.log" 2>&1 || rc=$?
  [ "$rc" = 64 ] || { cat "$WORK/refused.log"; die "$role with $* started (exit $rc), want exit 64"; }
}
refused head
refused head -e RAY_AUTH_MODE=disabled -e RAY_AUTH_TOKEN=some-token
log "containers refuse to start without Ray's token or with its auth disabled"
DPTRAIN_TOKEN="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')"
RAY_AUTH_TOKEN="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')"
DPTRAIN_PORT="$("$PYTHON" "$HERE/compose_helper.py" free-port)"
DPTRAIN_METRICS_PORT="$("$PYTHON" "$HERE/compose_helper.py" free-port)"
export DPTRAIN_TOKEN RAY_AUTH_TOKEN DPTRAIN_PORT DPTRAIN_METRICS_PORT
export RAY_WORKER_CPUS=2 RAY_SHM_SIZE=1gb RAY_OBJECT_STORE_MEMORY=300000000 DPTRAIN_RESTART=no
ADDRESS="127.0.0.1:$DPTRAIN_PORT"
COMPOSE_UP=1
run timeout 180 "${COMPOSE[@]}" up -d --no-build --scale ray-worker=2 >"$WORK/up.log" 2>&1 \
  || { cat "$WORK/up.log"; die "compose up failed"; }
log "containers started (ray-head healthy)"
coordinator="$("${COMPOSE[@]}" ps -q coordinator)"
head="$("${COMPOSE[@]}" ps -q ray-head)"
health=""
for _ in $(seq 1 240); do
  health="$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$coordinator" 2>/dev/null || echo gone)"
  [ "$health" = healthy ] && break
  [ "$health" = unhealthy ] || [ "$health" = gone ] && break
  sleep 0.5
done
[ "$health" = healthy ] || die "coordinator is $health, not healthy, after 120s"
# Both worker nodes registered with the head (the coordinator's node has no CPUs).
ray_cpus() {
  timeout 60 "$DOCKER" exec "$head" python -c \
    'import ray; ray.init(address="auto", log_to_driver=False, configure_logging=False); print(int(ray.cluster_resources().get("CPU", 0)))' 2>/dev/null | tail -1
}
cpus=""
for _ in $(seq 1 20); do cpus="$(ray_cpus || true)"; [ "$cpus" = 4 ] && break; sleep 1; done
[ "$cpus" = 4 ] || die "the Ray cluster has ${cpus:-?} CPUs, want 4 (2 workers x 2)"
log "coordinator healthy on $ADDRESS (metrics 127.0.0.1:$DPTRAIN_METRICS_PORT), Ray cluster CPUs: $cpus"
log "image: $("$DOCKER" exec "$coordinator" python -c 'import sys, numpy, ray, grpc
print("python", sys.version.split()[0], "numpy", numpy.__version__, "ray", ray.__version__, "grpcio", grpc.__version__)');" \
    "host: $("$PYTHON" -c 'import sys, numpy; print("python", sys.version.split()[0], "numpy", numpy.__version__)')"
# Published on the loopback only; the token is required.
published="$("$DOCKER" port "$coordinator")"
log "published: $(echo "$published" | tr '\n' ' ')"
{ [ "$(echo "$published" | grep -c .)" = 2 ] && ! echo "$published" | grep -qv -- '-> 127\.0\.0\.1:'; } \
  || die "ports not published on 127.0.0.1 only: $published"
if timeout 30 env -u DPTRAIN_TOKEN "${CLI[@]}" jobs --address "$ADDRESS" >"$WORK/no-token.log" 2>&1; then
  die "the server answered without a bearer token"
fi
grep -q UNAUTHENTICATED "$WORK/no-token.log" || { cat "$WORK/no-token.log"; die "no UNAUTHENTICATED without a token"; }
# The cluster turns away a client with the wrong token.
if timeout 60 "$DOCKER" exec -e RAY_AUTH_TOKEN=not-the-token "$head" ray health-check --address ray-head:6379 \
     >"$WORK/wrong-token.log" 2>&1; then
  cat "$WORK/wrong-token.log"; die "Ray accepted a wrong auth token"
fi
grep -qiE 'auth|token' "$WORK/wrong-token.log" || { cat "$WORK/wrong-token.log"; die "no auth error from Ray"; }
log "Ray rejected a wrong token: $(grep -m1 -oiE '[a-z]*(auth|token)[^.]*' "$WORK/wrong-token.log" | head -c 120)"
phase_end up

# --- job 1: the example, with the CLI over the published port -----------------------------------
phase_begin job
SPEC1="$REPO/examples/digits_mlp.yaml"
run timeout 300 "${CLI[@]}" submit "$SPEC1" --watch --address "$ADDRESS" >"$WORK/job1.log" 2>&1 \
  || { cat "$WORK/job1.log"; die "job 1 did not succeed"; }
JOB1="$(sed -n 's/.*submitted job \([^ ]*\).*/\1/p' "$WORK/job1.log" | head -1)"
[ -n "$JOB1" ] || { cat "$WORK/job1.log"; die "no job id in the submit output"; }
timeout 60 "${CLI[@]}" weights "$JOB1" -o "$WORK/job1.npz" --address "$ADDRESS"
timeout 120 "$PYTHON" "$HERE/compose_helper.py" compare "$SPEC1" "$WORK/job1.npz" || die "job 1 weights differ"
phase_end job

# --- job 2: kill a worker container mid-job --------------------------------------------------------
phase_begin kill-recovery
SPEC2="$WORK/kill.yaml"
cat > "$SPEC2" <<'EOF'
name: digits-kill
model: {input: 64, layers: [linear 128, relu, linear 10], loss: cross_entropy}
dataset: {name: digits, val_fraction: 0.2}
optimizer: {name: adam, lr: 0.003}
batch_size: 64
chunk_size: 32
epochs: 80
seed: 7
workers: 2
cpus_per_worker: 1
val_every: 500
checkpoint_every: 500
worker_timeout_s: 60
recovery_budget_s: 180
EOF
# Ray node id -> worker container, looked up beforehand so that the kill follows at once.
node_ips="$(timeout 60 "$DOCKER" exec "$head" python -c \
  'import ray; ray.init(address="auto", log_to_driver=False, configure_logging=False)
for n in ray.nodes():
    if n["Alive"]: print(n["NodeID"], n["NodeManagerAddress"])' 2>/dev/null)"
declare -A container_of=()
for c in $("${COMPOSE[@]}" ps -q ray-worker); do
  ip="$("$DOCKER" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")"
  node="$(echo "$node_ips" | awk -v ip="$ip" '$2==ip{print $1}')"
  [ -n "$node" ] && container_of[$node]="$c"
done
[ "${#container_of[@]}" = 2 ] || die "want 2 worker containers with a live Ray node each; nodes: $node_ips"
before="$(timeout 30 "$PYTHON" "$HERE/compose_helper.py" metric "http://127.0.0.1:$DPTRAIN_METRICS_PORT/metrics" dptrain_worker_failures_total)"
timeout 60 "${CLI[@]}" submit "$SPEC2" --address "$ADDRESS" >"$WORK/job2.log" 2>&1 || { cat "$WORK/job2.log"; die "submit 2"; }
JOB2="$(sed -n 's/.*submitted job \([^ ]*\).*/\1/p' "$WORK/job2.log" | head -1)"
NODES="$(timeout 130 "$PYTHON" "$HERE/compose_helper.py" wait-running "$ADDRESS" "$JOB2" 50 120)" \
  || die "job 2 did not get going"
# Kill the container of the job's first worker.
first_node="$(echo "$NODES" | head -1)"
victim="${container_of[$first_node]:-}"
[ -n "$victim" ] || die "no ray-worker container hosts node $first_node; nodes: $node_ips"
victim_ip="$(echo "$node_ips" | awk -v id="$first_node" '$1==id{print $2}')"
"$DOCKER" kill "$victim" >/dev/null
t_kill=$(date +%s.%N)
log "killed $("$DOCKER" inspect -f '{{.Name}}' "$victim" | tr -d /) (Ray node ${first_node:0:12}, $victim_ip) with job 2 running"
run timeout 420 "${CLI[@]}" watch "$JOB2" --address "$ADDRESS" >"$WORK/job2-watch.log" 2>&1 \
  || { tail -30 "$WORK/job2-watch.log"; die "job 2 did not succeed after the kill"; }
log "job 2 succeeded $(since "$t_kill")s after the kill"
after="$(timeout 30 "$PYTHON" "$HERE/compose_helper.py" metric "http://127.0.0.1:$DPTRAIN_METRICS_PORT/metrics" dptrain_worker_failures_total)"
log "dptrain_worker_failures_total: $before -> $after"
timeout 60 "$PYTHON" "$HERE/compose_helper.py" failures "$ADDRESS" "$JOB2" || true
awk -v a="$after" -v b="$before" 'BEGIN{exit !(a > b)}' || die "the kill was not seen as a worker failure"
timeout 60 "${CLI[@]}" weights "$JOB2" -o "$WORK/job2.npz" --address "$ADDRESS"
timeout 120 "$PYTHON" "$HERE/compose_helper.py" compare "$SPEC2" "$WORK/job2.npz" || die "job 2 weights differ"
phase_end kill-recovery

# --- the coordinator re-created with TLS: the job store in the volume outlives the container ----------
phase_begin tls-recreate
TLS_ARGS=()
if command -v openssl >/dev/null; then
  tls="$CTX/deploy/tls"; mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$tls/server.key" -out "$tls/server.crt" >/dev/null 2>&1 || die "openssl"
  chmod 0755 "$tls"; chmod 0644 "$tls/server.key" "$tls/server.crt"  # uid 1000 reads them (test only)
  timeout 120 "${COMPOSE[@]}" -f "$CTX/deploy/docker-compose.tls.yml" up -d --no-build --no-deps coordinator \
    >"$WORK/recreate.log" 2>&1 || { cat "$WORK/recreate.log"; die "re-creating the coordinator with TLS"; }
  TLS_ARGS=(--tls-ca "$tls/server.crt")
else
  log "no openssl: a plain restart instead"
  timeout 90 "${COMPOSE[@]}" restart -t 30 coordinator >"$WORK/recreate.log" 2>&1 || { cat "$WORK/recreate.log"; die "restart"; }
fi
coordinator="$("${COMPOSE[@]}" ps -q coordinator)"
health=""
for _ in $(seq 1 240); do
  health="$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$coordinator" 2>/dev/null || echo gone)"
  [ "$health" = healthy ] && break
  sleep 0.5
done
[ "$health" = healthy ] || die "coordinator is $health after its re-creation"
if [ ${#TLS_ARGS[@]} -gt 0 ] && timeout 30 "${CLI[@]}" jobs --address "$ADDRESS" >/dev/null 2>&1; then
  die "the TLS server answered a plaintext client"
fi
timeout 30 "${CLI[@]}" jobs --address "$ADDRESS" "${TLS_ARGS[@]}" >"$WORK/jobs.log" 2>&1 || { cat "$WORK/jobs.log"; die "jobs"; }
for j in "$JOB1" "$JOB2"; do
  grep "$j" "$WORK/jobs.log" | grep -q SUCCEEDED || { cat "$WORK/jobs.log"; die "job $j lost with the old container"; }
done
timeout 60 "${CLI[@]}" weights "$JOB2" -o "$WORK/job2-again.npz" --address "$ADDRESS" "${TLS_ARGS[@]}" >/dev/null
timeout 30 "$PYTHON" "$HERE/compose_helper.py" same "$WORK/job2.npz" "$WORK/job2-again.npz" || die "weights changed"
log "both jobs served ${TLS_ARGS[*]:+over TLS }by the new container; volume: $("$DOCKER" exec "$coordinator" \
  sh -c 'ls /var/lib/dptrain | tr "\n" " "; du -sh /var/lib/dptrain | cut -f1')"
phase_end tls-recreate

STATUS=0
