#!/usr/bin/env bash
# Stops crustd and removes what install.sh installed, after removing every pod (their
# containers, mounts, network namespaces, cgroups and CNI set-up, iptables rules
# included). With --purge it also deletes crust's data: images, configuration, logs.
#
#   ./packaging/uninstall.sh [--purge]      PREFIX as given to install.sh (/usr/local)
set -euo pipefail
. "$(dirname "$0")/common.sh"
require_root "$@"

purge=0
case "${1:-}" in
--purge) purge=1 ;;
"") ;;
*)
  echo "usage: $0 [--purge]" >&2
  exit 2
  ;;
esac
PREFIX=${PREFIX:-/usr/local}
BINDIR=$PREFIX/bin
CONFIG=/etc/crust/config.toml
config_args=()
[ -f "$CONFIG" ] && config_args=(--config "$CONFIG")

if [ -x "$BINDIR/crustd" ]; then
  root=$("$BINDIR/crustd" "${config_args[@]}" config get root)
  state=$("$BINDIR/crustd" "${config_args[@]}" config get state)
  # Pods are removed through the daemon, which knows what each one holds; one that is
  # not running is started for that.
  if ! "$BINDIR/crust" "${config_args[@]}" --timeout 2 version >/dev/null 2>&1 && [ -d "$root" ]; then
    if have_systemd && [ -f /etc/systemd/system/crustd.service ]; then
      systemctl start crustd
    elif [ -x /etc/init.d/crustd ]; then
      /etc/init.d/crustd start
    fi
    wait_for_crustd "$BINDIR" || true
  fi
  if "$BINDIR/crust" "${config_args[@]}" --timeout 5 version >/dev/null 2>&1; then
    "$BINDIR/crust" "${config_args[@]}" rmp --all
  fi
else
  root=/var/lib/crust
  state=/run/crust
fi

if have_systemd && [ -f /etc/systemd/system/crustd.service ]; then
  systemctl disable --now --quiet crustd || true
  rm -f /etc/systemd/system/crustd.service
  systemctl daemon-reload
fi
if [ -x /etc/init.d/crustd ]; then
  /etc/init.d/crustd stop
  command -v update-rc.d >/dev/null 2>&1 && update-rc.d -f crustd remove >/dev/null 2>&1 || true
  rm -f /etc/init.d/crustd
fi

for bin in "${CRUST_BINARIES[@]}" crust; do
  rm -f "$BINDIR/$bin"
done

# The sample network, if it is still the one install.sh put there, and its bridge.
here=$(dirname "$0")
if [ -f /etc/cni/net.d/10-crust-bridge.conflist ] && cmp -s "$here/10-crust-bridge.conflist" /etc/cni/net.d/10-crust-bridge.conflist; then
  rm -f /etc/cni/net.d/10-crust-bridge.conflist
  ip link delete crust0 2>/dev/null || true
fi

# crustd keeps its netns directory a mount point of its own (as `ip netns` does); any
# other mount still under crust's directories is a leak: say so, and undo it.
umount "$state/netns" 2>/dev/null || true
leaks=$(awk -v r="$root/" -v s="$state/" 'index($5, r) == 1 || index($5, s) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
if [ -n "$leaks" ]; then
  echo "unmounting what crust left mounted:" >&2
  echo "$leaks" >&2
  echo "$leaks" | xargs -r -n1 umount -l
fi

if [ $purge = 1 ]; then
  # The contents, then the directory: it may be a mount point of its own.
  for d in "$root" "$state"; do
    [ -d "$d" ] && find "$d" -mindepth 1 -delete && { rmdir "$d" 2>/dev/null || true; }
  done
  rm -rf /etc/crust /var/log/crustd.log /run/crustd.pid
  rm -rf /var/lib/cni/networks/crust
  echo "crust removed, with its data"
else
  echo "crust removed; its data stays in $root and /etc/crust (--purge deletes them)"
fi
