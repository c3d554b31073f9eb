#!/usr/bin/env bash
# What a new user does, run inside throwaway.sh: `install` runs packaging/install.sh
# from a fresh clone twice (install, then upgrade with a pod running) and uninstalls;
# `deb DEB` installs the package with apt where no Rust toolchain exists, runs a pod
# and purges it. Every step checks what a user would see; any failure exits non-zero.
set -euo pipefail
# No `producer | grep -q` below: grep -q exits at its first match, and under pipefail the
# producer's SIGPIPE on its next write would fail the pipeline, depending on timing.
image=127.0.0.1:5000/test/box:1
fail() { echo "FAIL: $*" >&2; exit 1; }

# Nothing of crust may be left: no process, mount, network namespace or CNI rule.
check_clean() {
  pgrep -x crustd >/dev/null && fail "crustd still runs"
  pgrep -x crust-monitor >/dev/null && fail "a crust-monitor still runs"
  if awk '$5 ~ /^\/(var\/lib|run)\/crust\// { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    fail "mounts left: $(grep -E ' /(var/lib|run)/crust/' /proc/self/mountinfo)"
  fi
  if iptables-save 2>/dev/null | grep -- '-A .*CNI-' >/dev/null; then
    fail "iptables rules left: $(iptables-save | grep -- '-A .*CNI-')"
  fi
  return 0
}

# Absent, or (a mount point of the copy's) with nothing in it.
empty() { [ ! -e "$1" ] || [ -z "$(ls -A "$1")" ]; }

case "$1" in
install)
  git clone -q /src /tmp/crust
  cd /tmp/crust
  export CRUST_PROFILE=dev CRUST_SMOKE_IMAGE=$image
  ./packaging/install.sh | tee /tmp/install-1.log
  grep -qx "a pod ran: hello from a crust pod" /tmp/install-1.log || fail "first install ran no pod"
  crust version | grep "RuntimeName:  crust" >/dev/null || fail "crust version"
  config_sum=$(sha256sum /etc/crust/config.toml)
  crust run --detach --name keeper "$image" -- sleep 3600 > /tmp/keeper
  pod=$(awk '/^pod / { print $2 }' /tmp/keeper)
  container=$(awk '/^container / { print $2 }' /tmp/keeper)
  monitor=$(pgrep -x crust-monitor)

  ./packaging/install.sh | tee /tmp/install-2.log
  grep -qx "a pod ran: hello from a crust pod" /tmp/install-2.log || fail "upgrade ran no pod"
  [ "$(sha256sum /etc/crust/config.toml)" = "$config_sum" ] || fail "upgrade changed the config"
  crust pods | grep "^${pod:0:13} " | grep Ready >/dev/null || fail "the pod did not survive the upgrade"
  crust ps | grep "^${container:0:13} .* Running " >/dev/null || fail "the container did not survive the upgrade"
  [ "$(pgrep -x crust-monitor)" = "$monitor" ] || fail "the container's monitor was replaced"
  [ "$(crust exec "$container" echo alive)" = alive ] || fail "exec in the kept container"

  ./packaging/uninstall.sh --purge
  check_clean
  [ ! -e /usr/local/bin/crustd ] && [ ! -e /usr/local/bin/crust ] || fail "binaries left"
  empty /var/lib/crust && [ ! -e /etc/crust ] || fail "data left after --purge"
  ;;
deb)
  deb=$2
  command -v cargo >/dev/null && fail "cargo is visible: this is not a machine without Rust"
  # A normal machine lets packages start their daemons; this one's image says no.
  rm -f /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" > /tmp/apt.log 2>&1 ||
    { cat /tmp/apt.log; fail "apt install"; }
  crust version | grep "RuntimeName:  crust" >/dev/null || fail "crustd does not answer after apt install"
  [ "$(crust run "$image" -- echo hello from a deb)" = "hello from a deb" ] || fail "a pod from the deb"
  crust run --detach --name left "$image" -- sleep 3600 > /dev/null
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq crust > /tmp/apt.log 2>&1 ||
    { cat /tmp/apt.log; fail "apt purge"; }
  check_clean
  [ ! -e /usr/bin/crustd ] && [ ! -e /etc/crust ] && empty /var/lib/crust || fail "files left after purge"
  ;;
*)
  fail "unknown scenario $1"
  ;;
esac
echo "scenario $1: ok"
