#!/usr/bin/env bash
# Runs a command as root on a throwaway copy of this machine: an overlay of / whose
# writes go to a tmpfs, in private mount, network and PID namespaces. Whatever the
# command installs, starts or breaks is gone when it exits: its processes die with the
# PID namespace, its mounts and network (bridges, iptables rules) with the others.
#
#   throwaway.sh WORKDIR [--no-rust] -- COMMAND...
#
# Inside, /src is the repository (read-only bind), /registry the registry data to serve
# on 127.0.0.1:5000 if REGISTRY_DATA is set, and $CARGO_TARGET_DIR the shared build
# directory. --no-rust hides the Rust toolchain, as on a machine that never built crust.
set -euo pipefail
work=$1
shift
hide_rust=0
if [ "${1:-}" = --no-rust ]; then
  hide_rust=1
  shift
fi
[ "${1:-}" = -- ] && shift

if [ -z "${CRUST_THROWAWAY_INSIDE:-}" ]; then
  export CRUST_THROWAWAY_INSIDE=1 CRUST_HIDE_RUST=$hide_rust
  exec unshare --mount --net --pid --fork --propagation private "$0" "$work" -- "$@"
fi

mount -t tmpfs -o mode=0755 throwaway "$work"
mkdir -p "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
r=$work/root
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
# What crust keeps must be on a file system overlayfs can use as an upper layer.
for d in run tmp var/lib/crust var/lib/cni var/log; do
  mkdir -p "$r/$d"
  mount -t tmpfs -o mode=0755 "throwaway-${d//\//-}" "$r/$d"
done
chmod 1777 "$r/tmp"
mkdir -p "$r/src"
mount --bind "$CRUST_SRC" "$r/src"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  mkdir -p "$r$CARGO_TARGET_DIR"
  mount --bind "$CARGO_TARGET_DIR" "$r$CARGO_TARGET_DIR"
fi
if [ "$CRUST_HIDE_RUST" = 1 ]; then
  for d in "$HOME/.cargo" "$HOME/.rustup" /usr/local/cargo /usr/local/rustup; do
    [ -d "$r$d" ] && mount -t tmpfs -o mode=0755 hidden "$r$d"
  done
fi
if [ -n "${REGISTRY_DATA:-}" ]; then
  mkdir -p "$r/registry"
  mount --bind "$REGISTRY_DATA" "$r/registry"
fi

exec chroot "$r" /bin/bash -c '
  set -euo pipefail
  ip link set lo up
  export CARGO_NET_OFFLINE=true
  if [ -d /registry ]; then
    cat > /tmp/registry.yml <<YML
version: 0.1
log: { level: warn, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: /registry } }
http: { addr: "127.0.0.1:5000", secret: throwaway }
YML
    docker-registry serve /tmp/registry.yml > /tmp/registry.log 2>&1 &
    for i in $(seq 1 100); do
      (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null && break
      sleep 0.1
    done
  fi
  cd /tmp
  "$@"
' throwaway "$@"
