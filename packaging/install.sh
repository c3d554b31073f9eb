#!/usr/bin/env bash
# Builds crust from this checkout, installs it and starts crustd, on a fresh Debian or
# Ubuntu machine. Run as root. Safe to run again (upgrades in place, keeps the config).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential pkg-config protobuf-compiler curl ca-certificates \
  runc containernetworking-plugins iptables iproute2

if ! command -v cargo >/dev/null 2>&1; then
  if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
fi

cargo build --release --locked --bin crustd --bin crust-monitor
install -D -m 0755 target/release/crustd /usr/local/bin/crustd
install -D -m 0755 target/release/crust-monitor /usr/local/bin/crust-monitor

install -d -m 0755 /etc/crust /etc/crust/certs.d
[ -f /etc/crust/config.toml ] || /usr/local/bin/crustd config default > /etc/crust/config.toml
/usr/local/bin/crustd --config /etc/crust/config.toml config check > /dev/null

# A node network for pods unless one is configured already.
install -d -m 0755 /etc/cni/net.d
if ! ls /etc/cni/net.d/*.conf /etc/cni/net.d/*.conflist /etc/cni/net.d/*.json >/dev/null 2>&1; then
  install -m 0644 packaging/10-crust-bridge.conflist /etc/cni/net.d/
fi

if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  install -m 0644 packaging/crustd.service /etc/systemd/system/crustd.service
  systemctl daemon-reload
  systemctl enable crustd
  systemctl restart crustd
else
  # No systemd (containers, minimal VMs): run it detached, logging to a file.
  if [ -f /run/crustd.pid ] && kill -0 "$(cat /run/crustd.pid)" 2>/dev/null; then
    kill "$(cat /run/crustd.pid)"
    while kill -0 "$(cat /run/crustd.pid)" 2>/dev/null; do sleep 0.1; done
  fi
  setsid /usr/local/bin/crustd --config /etc/crust/config.toml >> /var/log/crustd.log 2>&1 < /dev/null &
  echo $! > /run/crustd.pid
fi

for _ in $(seq 1 100); do
  [ -S /run/crust/crust.sock ] && break
  sleep 0.1
done
[ -S /run/crust/crust.sock ] || { echo "crustd did not start; see its log" >&2; exit 1; }
echo "crustd is running on unix:///run/crust/crust.sock"
