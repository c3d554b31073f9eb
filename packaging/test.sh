#!/usr/bin/env bash
# Installs what crust's tests need (Debian/Ubuntu packages) and runs the whole suite.
# Run as root: the end-to-end tests start real containers, network namespaces and a
# registry on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential pkg-config protobuf-compiler   # building crust (k8s-cri needs protoc)
  libseccomp-dev                                 # the embedded handler (libcontainer links libseccomp)
  runc crun                                      # OCI runtimes
  criu                                           # CheckpointContainer (runc checkpoint)
  containernetworking-plugins iptables iproute2  # CNI plugins and what they call
  docker-registry                                # the registry the tests push to
  containerd                                     # what tests/containerd_import.rs imports from
  busybox-static                                 # what the test images are built from
  attr util-linux procps hostname openssl                # getfattr, nsenter, ps, hostname for assertions
  strace                                         # the durability test watches sync order
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts the packaged registry on :5000; the tests run their own on free ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
  fi
fi

cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads="${CRUST_TEST_THREADS:-4}"
