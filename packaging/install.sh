#!/usr/bin/env bash
# Builds crust from this checkout, installs it, starts crustd and proves it works by
# running a pod whose container prints a line. For a fresh Debian 12+ or Ubuntu 22.04+
# machine, as root (or through sudo). Run again to upgrade in place: the configuration,
# the images and the running pods are kept.
#
# Environment:
#   PREFIX             where the binaries go (default /usr/local: /usr/local/bin)
#   CRUST_PROFILE      the cargo profile to build (default release)
#   CRUST_SMOKE_IMAGE  the image of the proving pod (default docker.io/library/busybox:1.36)
#   CRUST_SMOKE=0      skip the proving pod (a machine that reaches no registry)
set -euo pipefail
. "$(dirname "$0")/common.sh"
require_root "$@"
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
BINDIR=$PREFIX/bin
PROFILE=${CRUST_PROFILE:-release}
SMOKE_IMAGE=${CRUST_SMOKE_IMAGE:-docker.io/library/busybox:1.36}

ensure_packages build-essential pkg-config protobuf-compiler libseccomp-dev ca-certificates \
  runc containernetworking-plugins iptables
ensure_cargo

echo "building crust ($PROFILE)"
built=$(build_binaries "$PROFILE")

# Each binary is replaced by a rename, so a running crustd or crust-monitor keeps the
# file it started from and the next start takes the new one.
install -d -m 0755 "$BINDIR"
for bin in "${CRUST_BINARIES[@]}"; do
  install -m 0755 "$built/$bin" "$BINDIR/.$bin.new"
  mv -f "$BINDIR/.$bin.new" "$BINDIR/$bin"
done
ln -sfn crustd "$BINDIR/crust"

install -d -m 0755 /etc/crust /etc/crust/certs.d
if [ ! -f /etc/crust/config.toml ]; then
  (umask 0077 && "$BINDIR/crustd" config default > /etc/crust/config.toml)
fi
"$BINDIR/crustd" --config /etc/crust/config.toml config check > /dev/null

# A node network for pods, unless one is configured already.
install -d -m 0755 /etc/cni/net.d
if ! ls /etc/cni/net.d/*.conf /etc/cni/net.d/*.conflist /etc/cni/net.d/*.json >/dev/null 2>&1; then
  install -m 0644 packaging/10-crust-bridge.conflist /etc/cni/net.d/
fi

# A restart touches only the daemon: containers outlive it and are adopted again.
if have_systemd; then
  render packaging/crustd.service "$BINDIR" /etc/systemd/system/crustd.service 0644
  systemctl daemon-reload
  systemctl enable --quiet crustd
  systemctl restart crustd
else
  render packaging/crustd.init "$BINDIR" /etc/init.d/crustd 0755
  if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d crustd defaults >/dev/null 2>&1 || true
  fi
  /etc/init.d/crustd restart
fi
wait_for_crustd "$BINDIR"
socket=$("$BINDIR/crustd" --config /etc/crust/config.toml config get listen)
echo "crustd is running on unix://$socket"

if [ "${CRUST_SMOKE:-1}" != 0 ]; then
  echo "proving it: a pod running $SMOKE_IMAGE"
  line=$("$BINDIR/crust" run --name crust-install-check "$SMOKE_IMAGE" -- echo "hello from a crust pod") || {
    echo "the proving pod failed; set CRUST_SMOKE_IMAGE to an image a reachable registry has, or CRUST_SMOKE=0" >&2
    exit 1
  }
  [ "$line" = "hello from a crust pod" ] || {
    echo "the proving pod printed '$line'" >&2
    exit 1
  }
  echo "a pod ran: $line"
fi
echo "try: crust version; crust pods; crust run busybox -- uname -a"
