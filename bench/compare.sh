#!/usr/bin/env bash
# crust against containerd (and crust-monitor against conmon) on this machine, one after
# the other, with the same runc, the same CNI plugins and config, and the same local
# registry; prints crust/containerd ratios and writes bench/results/{crust,containerd,
# conmon}.json, summary.md and chart.svg.
#
# Run as root on Debian 12 (or a Debian-like system with the same packages):
#
#   sudo bench/compare.sh            # full run, under 10 minutes on 2 cores
#   sudo QUICK=1 bench/compare.sh    # smoke run, about a minute
#
# Parameters (environment):
#   SEQUENTIAL=30         sequential pod lifecycles
#   CONCURRENT=40         concurrent pod lifecycles ...
#   CONCURRENCY=4         ... this many at once
#   PULL_RUNS=3           cold pulls of the multi-layer image
#   PULL_LAYERS=5         layers of generated files on top of its busybox base ...
#   PULL_LAYER_MIB=16     ... each this many MiB uncompressed
#   LIST_PODS=100         pods for the List scenario ...
#   LIST_CONTAINERS=5     ... with this many containers each
#   LIST_ITERATIONS=200   timed calls per List variant
#   SETUP_CONCURRENCY=4   pods started/removed at once while setting up List
#   LIST_SCALE=500,5000,20000  container counts of the List scale scenario (exited
#                         containers; "" skips it); 20,000 takes each runtime tens of
#                         minutes to create and remove on 2 cores
#   LIST_SCALE_PER_POD=100     ... containers per pod there
#   LIST_SCALE_ITERATIONS=50   ... timed calls per List variant and size
#   RUNTIMES="crust crust-runc containerd"   which runtimes to measure: crust on its
#                         default handler (embedded: libcontainer in crust-monitor) runs
#                         every scenario; crust-HANDLER runs only the pod lifecycles, on
#                         that runtime handler (runc, crun, embedded). crust-crun needs a
#                         cgroup v2 or pure v1 host: crun 1.8 refuses hybrid hierarchies
#                         ("cgroups in hybrid mode not supported"), as on the test VM
#   CRUST_LOG_LEVEL=info  crustd's log level (debug logs every RPC with its duration)
#   PERF=0                1: record crustd with `perf record -g` during its suite
#   RESULTS=bench/results where results go (JSON, summary.md, chart.svg)
#   ARTIFACTS=/var/tmp/crust-bench-artifacts  where daemon logs (of failed suites, or
#                         crustd's with CRUST_LOG_LEVEL=debug) and perf data go
#   ROOT_FS_SIZE=8G       size of each runtime's (sparse) root filesystem
#   SKIP_APT=0 SKIP_BUILD=0  skip installing packages / building
#
# Everything lives in private directories (a work dir under /var/tmp, state under
# /run): registry, images, CNI config (bridge crbench0 on 10.231.0.0/16), crustd's and
# containerd's root, state and sockets. Network traffic stays on loopback and in the
# network namespaces the runtimes create here. On exit, also on error or Ctrl-C,
# everything is stopped and removed: processes, mounts, network namespaces, the bridge,
# iptables chains CNI made, cgroups, directories.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ ${QUICK:-0} == 1 ]]; then
    : "${SEQUENTIAL:=5}" "${CONCURRENT:=8}" "${PULL_RUNS:=1}" "${PULL_LAYERS:=3}"
    : "${PULL_LAYER_MIB:=4}" "${LIST_PODS:=10}" "${LIST_CONTAINERS:=2}"
    : "${LIST_ITERATIONS:=50}" "${LIST_SCALE:=200,1000}"
fi
: "${SEQUENTIAL:=30}" "${CONCURRENT:=40}" "${CONCURRENCY:=4}"
: "${PULL_RUNS:=3}" "${PULL_LAYERS:=5}" "${PULL_LAYER_MIB:=16}"
: "${LIST_PODS:=100}" "${LIST_CONTAINERS:=5}" "${LIST_ITERATIONS:=200}"
: "${SETUP_CONCURRENCY:=4}"
: "${LIST_SCALE=500,5000,20000}" "${LIST_SCALE_PER_POD:=100}" "${LIST_SCALE_ITERATIONS:=50}"
: "${RUNTIMES:=crust crust-runc containerd}"
: "${CRUST_LOG_LEVEL:=info}"
: "${PERF:=0}"
: "${RESULTS:=$REPO/bench/results}"
: "${ARTIFACTS:=/var/tmp/crust-bench-artifacts}"
: "${SKIP_APT:=0}" "${SKIP_BUILD:=0}"
: "${ROOT_FS_SIZE:=8G}"

BRIDGE=crbench0
SUBNET=10.231.0.0/16
CGROUP_PARENT=/crust-bench
RUNC=/usr/sbin/runc
CRUN=/usr/bin/crun
CNI_BIN=/usr/lib/cni
PACKAGES=(containerd conmon runc crun containernetworking-plugins docker-registry
    busybox-static skopeo protobuf-compiler tini jq curl iproute2 iptables)

log() { printf '\n== %s\n' "$*"; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (runtimes need it)"

# --- packages, then re-run under a subreaper ------------------------------------------
# Runtimes detach their per-pod helpers (crust-monitor, containerd-shim, conmon); when
# PID 1 does not reap, their exits would leave zombies. tini -s adopts and reaps them.
if [[ -z ${CRUST_BENCH_REAPER:-} ]]; then
    if [[ $SKIP_APT != 1 ]]; then
        log "installing packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${PACKAGES[@]}" >/dev/null
    fi
    command -v tini >/dev/null || die "tini is missing (apt-get install tini)"
    export CRUST_BENCH_REAPER=1
    exec tini -s -- bash "$0" "$@"
fi

# --- build ----------------------------------------------------------------------------
TARGET=${CARGO_TARGET_DIR:-$REPO/target}/release
if [[ $SKIP_BUILD != 1 ]]; then
    log "building crustd, crust-monitor and crust-bench (release)"
    command -v cargo >/dev/null || die "cargo is missing (see packaging/install.sh)"
    (cd "$REPO" && cargo build --release -p crust -p crust-runtime -p crust-bench --bins)
fi
for bin in crustd crust-monitor crust-bench; do
    [[ -x $TARGET/$bin ]] || die "$TARGET/$bin is missing: build it first"
done
BENCH=$TARGET/crust-bench
# crust's built-in pause, which the build script made: containerd's pause image gets the
# same binary, so both runtimes run the same infra process.
PAUSE_BIN=$(ls -t "$TARGET"/build/crust-runtime-*/out/crust-pause 2>/dev/null | head -n1 || true)
[[ -n $PAUSE_BIN ]] || die "crust-pause not found under $TARGET/build"

# --- private directories and clean-up -------------------------------------------------
WORK=$(mktemp -d /var/tmp/crust-bench.XXXXXX)
# Short: crust's attach sockets live at STATE/c/bundles/<64 hex id>/attach, and a
# socket path must fit in 108 bytes.
STATE=$(mktemp -d /run/crb.XXXXXX)
mkdir -p "$RESULTS" "$WORK/logs"
REGISTRY_PID="" CRUSTD_PID="" CONTAINERD_PID="" PERF_PID=""
CONMON_ID=""
RUN_CONTAINERD_EXISTED=0; [[ -e /run/containerd ]] && RUN_CONTAINERD_EXISTED=1
RUN_NETNS_EXISTED=0; [[ -e /run/netns ]] && RUN_NETNS_EXISTED=1
# containerd's CNI library caches results in /var/lib/cni, which it cannot be told to
# move (crust's cache is private).
VAR_LIB_CNI_EXISTED=0; [[ -e /var/lib/cni ]] && VAR_LIB_CNI_EXISTED=1
NETNS_BEFORE=$(ls /run/netns 2>/dev/null || true)
SHIM_SOCKETS_BEFORE=$(ls /run/containerd/s 2>/dev/null || true)
IPT_CHAINS_BEFORE=$(iptables-save -t nat 2>/dev/null | grep -oE '^:CNI-[^ ]+' | sort || true)

# Stops a process we started: SIGTERM, up to 15 s, then SIGKILL.
stop_pid() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Pids of processes whose command line mentions one of our private directories.
our_processes() {
    local pid
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -e "$WORK" -e "$STATE"; then
            echo "$pid"
        fi
    done
}

unmount_under() {
    local dir=$1 m
    # Deepest first; lazily if busy, so one mount does not stop the rest. Loop mounts
    # release their loop device with the last unmount.
    for m in $(awk -v d="$dir" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}

remove_cgroups() {
    local mnt
    for mnt in $(awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo); do
        for d in "$mnt$CGROUP_PARENT" "$mnt/crust-bench-conmon"; do
            [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
        done
    done
    return 0
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    log "cleaning up"
    stop_pid "$PERF_PID"
    if [[ -n $CONMON_ID ]]; then
        $RUNC --root "$STATE/conmon/runc" kill "$CONMON_ID" KILL 2>/dev/null
        sleep 0.5
        $RUNC --root "$STATE/conmon/runc" delete -f "$CONMON_ID" 2>/dev/null
    fi
    stop_pid "$CRUSTD_PID"
    stop_pid "$CONTAINERD_PID"
    stop_pid "$REGISTRY_PID"
    # Containers of a run cut short: every runc root under our state holds them.
    local runc_root id pid
    for runc_root in $(find "$STATE" -name state.json -printf '%h\n' 2>/dev/null | xargs -r -n1 dirname | sort -u); do
        for id in $($RUNC --root "$runc_root" list -q 2>/dev/null); do
            $RUNC --root "$runc_root" delete -f "$id" 2>/dev/null
        done
    done
    # Their helpers (monitors, shims, conmon).
    for pid in $(our_processes); do kill -KILL "$pid" 2>/dev/null; done
    sleep 0.5
    unmount_under "$STATE"
    unmount_under "$WORK"
    # containerd keeps shim sockets in /run/containerd/s whatever its state dir is (and
    # network namespaces in /run/netns unless told otherwise, as it is here): remove the
    # ones that appeared.
    local ns
    for ns in $(ls /run/netns 2>/dev/null); do
        if ! grep -qxF "$ns" <<<"$NETNS_BEFORE"; then
            umount -l "/run/netns/$ns" 2>/dev/null; rm -f "/run/netns/$ns"
        fi
    done
    [[ $RUN_NETNS_EXISTED == 0 ]] && rmdir /run/netns 2>/dev/null
    [[ $VAR_LIB_CNI_EXISTED == 0 ]] && rm -rf /var/lib/cni
    if [[ $RUN_CONTAINERD_EXISTED == 0 ]]; then
        rm -rf /run/containerd
    else
        for s in $(ls /run/containerd/s 2>/dev/null); do
            grep -qxF "$s" <<<"$SHIM_SOCKETS_BEFORE" || rm -f "/run/containerd/s/$s"
        done
    fi
    ip link del "$BRIDGE" 2>/dev/null
    # CNI DEL removes each pod's masquerade chain; remove any a failed DEL left.
    local chain
    for chain in $(iptables-save -t nat 2>/dev/null | grep -oE '^:CNI-[^ ]+' | sort); do
        grep -qxF "$chain" <<<"$IPT_CHAINS_BEFORE" && continue
        chain=${chain#:}
        iptables-save -t nat | grep -E "^-A POSTROUTING .* -j $chain( |$)" | sed 's/^-A //' |
            while read -r rule; do eval "iptables -t nat -D $rule"; done
        iptables -t nat -F "$chain" 2>/dev/null; iptables -t nat -X "$chain" 2>/dev/null
    done
    remove_cgroups
    rm -rf "$WORK" "$STATE"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- registry and images --------------------------------------------------------------
REGISTRY_PORT=${REGISTRY_PORT:-35231}
ss -ltnH "sport = :$REGISTRY_PORT" | grep -q . && die "port $REGISTRY_PORT is taken (set REGISTRY_PORT)"
REG=127.0.0.1:$REGISTRY_PORT
log "registry on $REG"
mkdir -p "$WORK/registry"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
http:
  addr: $REG
  secret: crust-bench
EOF
env -i /usr/bin/docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$REG/v2/" >/dev/null || die "registry did not start: $(cat "$WORK/registry/log")"

log "building and pushing images"
push() { # name kind [args...]
    local name=$1; shift
    "$BENCH" image --out "$WORK/oci/$name" --tag 1 "$@" >/dev/null
    skopeo copy --quiet --insecure-policy --dest-tls-verify=false \
        "oci:$WORK/oci/$name:1" "docker://$REG/bench/$name:1"
}
push busybox busybox
push layered layered --layers "$PULL_LAYERS" --layer-mib "$PULL_LAYER_MIB"
push pause pause --binary "$PAUSE_BIN"
mkdir -p "$WORK/certs.d/$REG"
cat >"$WORK/certs.d/$REG/hosts.toml" <<EOF
server = "http://$REG"
[host."http://$REG"]
  capabilities = ["pull", "resolve"]
EOF

# --- CNI ------------------------------------------------------------------------------
# One network, one conflist for both: bridge + host-local and portmap. Neither needs a
# loopback plugin in it: containerd runs CNI's loopback plugin on every pod by itself,
# crust sets the pod's lo up with one ioctl when it makes the namespace.
mkdir -p "$WORK/cni/crust" "$WORK/cni/containerd" "$WORK/cni/ipam"
conflist() {
    cat <<EOF
{"cniVersion": "1.0.0", "name": "crbench", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$WORK/cni/ipam",
            "ranges": [[{"subnet": "$SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
}
conflist >"$WORK/cni/crust/10-crbench.conflist"
conflist >"$WORK/cni/containerd/10-crbench.conflist"

SUITE_ARGS=(
    --image "$REG/bench/busybox:1" --pull-image "$REG/bench/layered:1" --pull-runs "$PULL_RUNS"
    --sequential "$SEQUENTIAL" --concurrent "$CONCURRENT" --concurrency "$CONCURRENCY"
    --pods "$LIST_PODS" --containers-per-pod "$LIST_CONTAINERS"
    --list-iterations "$LIST_ITERATIONS" --setup-concurrency "$SETUP_CONCURRENCY"
    --cgroup-parent "$CGROUP_PARENT" --log-dir "$WORK/logs"
)

LIFECYCLE_ARGS=(
    --image "$REG/bench/busybox:1" --no-list
    --sequential "$SEQUENTIAL" --concurrent "$CONCURRENT" --concurrency "$CONCURRENCY"
    --cgroup-parent "$CGROUP_PARENT" --log-dir "$WORK/logs"
)

SCALE_ARGS=(
    --image "$REG/bench/busybox:1" --sizes "$LIST_SCALE"
    --containers-per-pod "$LIST_SCALE_PER_POD" --list-iterations "$LIST_SCALE_ITERATIONS"
    --setup-concurrency "$SETUP_CONCURRENCY"
    --cgroup-parent "$CGROUP_PARENT" --log-dir "$WORK/logs"
)

# A suite failed: keep the daemon's log and stop.
failed() { # name log
    mkdir -p "$ARTIFACTS"
    cp "$2" "$ARTIFACTS/$1.log"
    tail -n 20 "$2" >&2
    die "the $1 suite failed; its log is in $ARTIFACTS/$1.log"
}

# Each runtime keeps its persistent root on a fresh ext4 of its own (a sparse loop
# image): unpacking and deleting thousands of files leaves the filesystem slower to
# allocate inodes for minutes (ext4 skips recently deleted inodes), which would
# penalize whichever runtime runs second on a shared one.
fresh_root() { # name: mounts one at $WORK/name/root
    local img=$WORK/$1.ext4 mnt=$WORK/$1/root
    mkdir -p "$mnt"
    truncate -s "$ROOT_FS_SIZE" "$img"
    mkfs.ext4 -q -F "$img"
    mount -o loop "$img" "$mnt"
}

wait_socket() { # socket pid log
    for _ in $(seq 300); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || die "daemon exited: $(tail -n 20 "$3")"
        sleep 0.1
    done
    die "no socket $1: $(tail -n 20 "$3")"
}

# --- crust ----------------------------------------------------------------------------
run_crust() { # [handler]: all scenarios on the default handler, or lifecycles on one
    local handler=${1:-} name=crust
    [[ -n $handler ]] && name=crust-$handler
    log "$name"
    fresh_root crust
    mkdir -p "$STATE/c"
    cat >"$WORK/crust/config.toml" <<EOF
root = "$WORK/crust/root"
state = "$STATE/c"
listen = "$STATE/c/crust.sock"
log_level = "$CRUST_LOG_LEVEL"
cgroup_driver = "cgroupfs"
${handler:+default_runtime = \"$handler\"}
[runtimes.runc]
path = "$RUNC"
[runtimes.crun]
path = "$CRUN"
[registry]
config_path = "$WORK/certs.d"
[cni]
conf_dir = "$WORK/cni/crust"
bin_dirs = ["$CNI_BIN"]
cache_dir = "$WORK/crust/cni-cache"
EOF
    "$TARGET/crustd" --config "$WORK/crust/config.toml" >"$WORK/crust/crustd.log" 2>&1 &
    CRUSTD_PID=$!
    wait_socket "$STATE/c/crust.sock" "$CRUSTD_PID" "$WORK/crust/crustd.log"
    sleep 2 # let start-up work finish before the idle reading
    if [[ $PERF == 1 && -z $handler ]]; then
        mkdir -p "$ARTIFACTS"
        perf record -F 499 -g -p "$CRUSTD_PID" -o "$ARTIFACTS/crustd.perf.data" >/dev/null 2>&1 &
        PERF_PID=$!
    fi
    local args=("${SUITE_ARGS[@]}")
    # Another handler changes how containers start, not pulls or List: lifecycles only.
    [[ -n $handler ]] && args=("${LIFECYCLE_ARGS[@]}")
    "$BENCH" suite --endpoint "$STATE/c/crust.sock" --name "$name" \
        --json "$RESULTS/$name.json" --daemon-pid "$CRUSTD_PID" \
        --helper crust-monitor --helper-match "$STATE/c/" "${args[@]}" ||
        failed "$name" "$WORK/crust/crustd.log"
    if [[ -n $LIST_SCALE && -z $handler ]]; then
        "$BENCH" list-scale --endpoint "$STATE/c/crust.sock" --name crust \
            --json "$RESULTS/crust-scale.json" --daemon-pid "$CRUSTD_PID" "${SCALE_ARGS[@]}" ||
            failed crust "$WORK/crust/crustd.log"
    fi
    if [[ -n $PERF_PID ]]; then
        kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true; PERF_PID=""
    fi
    stop_pid "$CRUSTD_PID"; CRUSTD_PID=""
    unmount_under "$STATE/c"
    unmount_under "$WORK/crust"
    if [[ $CRUST_LOG_LEVEL == debug ]]; then
        mkdir -p "$ARTIFACTS" && cp "$WORK/crust/crustd.log" "$ARTIFACTS/$name.log"
    fi
    return 0
}

# --- conmon, as CRI-O runs it, beside crust-monitor -----------------------------------
run_conmon() {
    log "conmon (one container, started the way CRI-O starts it)"
    local dir=$WORK/conmon bundle=$WORK/conmon/bundle layer
    mkdir -p "$bundle/rootfs" "$dir/exits" "$dir/persist" "$STATE/conmon/attach"
    layer=$(jq -r '.manifests[0].digest' "$WORK/oci/busybox/index.json")
    layer=$(jq -r '.layers[0].digest' "$WORK/oci/busybox/blobs/sha256/${layer#sha256:}")
    tar -xzf "$WORK/oci/busybox/blobs/sha256/${layer#sha256:}" -C "$bundle/rootfs"
    (cd "$bundle" && $RUNC spec)
    CONMON_ID=crust-bench-conmon-$$
    jq --arg cg "/crust-bench-conmon/$CONMON_ID" \
        '.process.terminal = false | .process.args = ["/bin/sleep", "3600"]
         | .linux.cgroupsPath = $cg' "$bundle/config.json" >"$bundle/config.json.new"
    mv "$bundle/config.json.new" "$bundle/config.json"
    conmon --api-version 1 -b "$bundle" -c "$CONMON_ID" -u "$CONMON_ID" -n bench-conmon \
        -r "$RUNC" --runtime-arg "--root=$STATE/conmon/runc" \
        -p "$bundle/pidfile" -P "$dir/conmon.pid" -l "$dir/ctr.log" --log-level info \
        --exit-dir "$dir/exits" --socket-dir-path "$STATE/conmon/attach" \
        --persist-dir "$dir/persist"
    for _ in $(seq 100); do [[ -s $bundle/pidfile ]] && break; sleep 0.1; done
    $RUNC --root "$STATE/conmon/runc" start "$CONMON_ID"
    sleep 2
    "$BENCH" memory --name conmon --helper conmon --helper-match "$bundle" \
        --json "$RESULTS/conmon.json"
    $RUNC --root "$STATE/conmon/runc" kill "$CONMON_ID" KILL
    for _ in $(seq 50); do [[ -e $dir/exits/$CONMON_ID ]] && break; sleep 0.1; done
    $RUNC --root "$STATE/conmon/runc" delete -f "$CONMON_ID" 2>/dev/null || true
    CONMON_ID=""
    remove_cgroups
}

# --- containerd -----------------------------------------------------------------------
run_containerd() {
    log "containerd ($(containerd --version | awk '{print $3}'))"
    local root=$WORK/containerd state=$STATE/containerd
    fresh_root containerd
    mkdir -p "$state"
    cat >"$root/config.toml" <<EOF
version = 2
root = "$root/root"
state = "$state"
# Snapshotters and tracing a CRI node with overlayfs does not use. (The v1 runtime
# stays: containerd 1.6's task service does not load without it.)
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.native",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "$state/containerd.sock"
[ttrpc]
  address = "$state/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "warn"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$root/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$REG/bench/pause:1"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true
    # This machine cannot lower OOM scores (no CAP_SYS_RESOURCE): keep them at or above
    # containerd's own.
    restrict_oom_score_adj = true
    max_concurrent_downloads = 3
    # Pod network namespaces under the state dir rather than /run/netns.
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$RUNC"
          Root = "$state/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$CNI_BIN"
      conf_dir = "$WORK/cni/containerd"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$WORK/certs.d"
EOF
    containerd --config "$root/config.toml" >"$root/containerd.log" 2>&1 &
    CONTAINERD_PID=$!
    wait_socket "$state/containerd.sock" "$CONTAINERD_PID" "$root/containerd.log"
    # The sandbox image is present on a node before pods come: pull it now.
    ctr --address "$state/containerd.sock" -n k8s.io images pull --plain-http \
        "$REG/bench/pause:1" >/dev/null
    sleep 2
    "$BENCH" suite --endpoint "$state/containerd.sock" --name containerd \
        --json "$RESULTS/containerd.json" --daemon-pid "$CONTAINERD_PID" \
        --helper containerd-shim --helper-match "$state/containerd.sock" "${SUITE_ARGS[@]}" ||
        failed containerd "$root/containerd.log"
    if [[ -n $LIST_SCALE ]]; then
        "$BENCH" list-scale --endpoint "$state/containerd.sock" --name containerd \
            --json "$RESULTS/containerd-scale.json" --daemon-pid "$CONTAINERD_PID" \
            "${SCALE_ARGS[@]}" || failed containerd "$root/containerd.log"
    fi
    stop_pid "$CONTAINERD_PID"; CONTAINERD_PID=""
    unmount_under "$state"
    unmount_under "$root"
    return 0
}

for runtime in $RUNTIMES; do
    case $runtime in
        crust) run_crust; run_conmon ;;
        crust-*) run_crust "${runtime#crust-}" ;;
        containerd) run_containerd ;;
        *) die "unknown runtime $runtime" ;;
    esac
done

# --- report ---------------------------------------------------------------------------
if [[ -f $RESULTS/crust.json && -f $RESULTS/containerd.json ]]; then
    log "crust / containerd"
    conmon_arg=()
    [[ -f $RESULTS/conmon.json ]] && conmon_arg=(--conmon "$RESULTS/conmon.json")
    "$BENCH" chart "$RESULTS/crust.json" "$RESULTS/containerd.json" "${conmon_arg[@]}" \
        --out "$RESULTS/chart.svg" | tee "$RESULTS/summary.md"
fi
# Pod start per runtime handler: the lifecycle metrics of each crust run beside
# containerd's, with the ratio.
if [[ -f $RESULTS/containerd.json ]] && compgen -G "$RESULTS/crust*.json" >/dev/null; then
    log "pod lifecycles per crust runtime handler (p50; ratio to containerd)"
    {
        echo "| run | pod running, sequential | pod running, $CONCURRENCY at once | whole lifecycle | daemon CPU per pod |"
        echo "| --- | ---: | ---: | ---: | ---: |"
        for f in "$RESULTS"/crust.json "$RESULTS"/crust-*.json; do
            [[ -f $f && $f != *-scale.json ]] || continue
            jq -r --slurpfile c "$RESULTS/containerd.json" '
                def seq: .lifecycle[] | select(.concurrency == 1);
                def par: .lifecycle[] | select(.concurrency > 1);
                def cell(a; b; unit): "\(a * 10 | round / 10) \(unit) (\(a / b * 100 | round / 100))";
                . as $o | $c[0] as $t |
                "| \($o.name) | " +
                cell($o | seq.pod_running.p50_ms; $t | seq.pod_running.p50_ms; "ms") + " | " +
                cell($o | par.pod_running.p50_ms; $t | par.pod_running.p50_ms; "ms") + " | " +
                cell($o | seq.total.p50_ms; $t | seq.total.p50_ms; "ms") + " | " +
                cell(($o | seq.daemon_cpu_s_per_pod) * 1000; ($t | seq.daemon_cpu_s_per_pod) * 1000; "ms") + " |"' "$f"
        done
        # Where a sequential pod start's time goes: p50 of each CRI call kubelet makes,
        # per run (pod running = RunPodSandbox + CreateContainer + StartContainer and
        # the client's round trips).
        echo
        echo "| run | RunPodSandbox | CreateContainer | StartContainer | StopContainer | StopPodSandbox | RemoveContainer | RemovePodSandbox |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for f in "$RESULTS"/crust.json "$RESULTS"/crust-*.json "$RESULTS"/containerd.json; do
            [[ -f $f && $f != *-scale.json ]] || continue
            jq -r '(.lifecycle[] | select(.concurrency == 1) | .rpcs) as $r |
                "| \(.name) | " + ([("RunPodSandbox", "CreateContainer", "StartContainer",
                    "StopContainer", "StopPodSandbox", "RemoveContainer", "RemovePodSandbox") |
                    "\($r[.].p50_ms // 0 | . * 10 | round / 10) ms"] | join(" | ")) + " |"' "$f"
        done
    } | tee "$RESULTS/handlers.md"
fi
# The List scale points side by side: p99 of each variant per size, and answer sizes.
if [[ -f $RESULTS/crust-scale.json ]]; then
    log "List latency by container count (p99 ms; exited containers)"
    for f in "$RESULTS"/crust-scale.json "$RESULTS"/containerd-scale.json; do
        [[ -f $f ]] || continue
        jq -r --arg n "$(basename "$f" -scale.json)" '.list_scale.points[] |
            "\($n) \(.containers) containers: " +
            ([.calls | to_entries[] | "\(.key) \(.value.p99_ms * 100 | round / 100)"] | join(", ")) +
            "; relist answer \(.response_bytes.ListContainers) bytes" +
            (if (.errors | length) > 0 then "; errors: \(.errors)" else "" end)' "$f"
    done | tee "$RESULTS/scale.md"
fi
