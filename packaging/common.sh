# Shared by install.sh, uninstall.sh and build-deb.sh: sourced, not run.

# Re-runs the calling script as root (through sudo where it exists), or stops.
require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      exec sudo --preserve-env "$(readlink -f "$0")" "$@"
    fi
    echo "$(basename "$0"): run as root (sudo is not installed)" >&2
    exit 1
  fi
}

# Installs the Debian/Ubuntu packages named that are missing; apt is not touched when
# none is, so a machine that has them needs no network.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Makes cargo available: the one on PATH, rustup's in ~/.cargo, or a new rustup install
# (Debian's own cargo is too old for the 2024 edition).
ensure_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    ensure_packages curl ca-certificates
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
}

# Builds the binaries crustd needs with cargo profile $1 and prints the directory that
# holds them. Every binary crustd runs is listed here and nowhere else.
build_binaries() {
  local profile=$1 dir
  cargo build --locked --profile "$profile" -p crust --bin crustd -p crust-runtime --bin crust-monitor >&2
  case "$profile" in
    dev | test) dir=debug ;;
    *) dir=$profile ;;
  esac
  echo "${CARGO_TARGET_DIR:-$(pwd)/target}/$dir"
}

# The binaries, as installed: crust is crustd under the name that makes it the client.
CRUST_BINARIES=(crustd crust-monitor)

# True when systemd runs this machine (the check sd_booted(3) makes).
have_systemd() {
  [ -d /run/systemd/system ]
}

# Waits until the daemon answers Version through its socket.
wait_for_crustd() {
  local bindir=$1 i
  for i in $(seq 1 200); do
    "$bindir/crust" --timeout 2 version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "crustd did not answer on its socket; its log: /var/log/crustd.log or journalctl -u crustd" >&2
  return 1
}

# Writes a packaging template with @BINDIR@ replaced.
render() {
  local template=$1 bindir=$2 dest=$3 mode=$4
  sed "s|@BINDIR@|$bindir|g" "$template" > "$dest.tmp"
  chmod "$mode" "$dest.tmp"
  mv -f "$dest.tmp" "$dest"
}
