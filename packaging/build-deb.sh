#!/usr/bin/env bash
# Builds the crust Debian package from this checkout: target/debian/crust_VERSION_ARCH.deb
# (or in the directory given). Needs cargo and dpkg-deb; no root.
#
# Environment:
#   CRUST_PROFILE          the cargo profile to build (default release)
#   CRUST_DEB_COMPRESSION  dpkg-deb's compressor (default xz)
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/common.sh

out=${1:-target/debian}
PROFILE=${CRUST_PROFILE:-release}
ensure_cargo
built=$(build_binaries "$PROFILE")
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d "$root/DEBIAN" "$root/usr/bin" "$root/etc/crust/certs.d" "$root/etc/init.d" \
  "$root/lib/systemd/system" "$root/usr/share/crust" "$root/usr/share/doc/crust"
for bin in "${CRUST_BINARIES[@]}"; do
  install -m 0755 "$built/$bin" "$root/usr/bin/$bin"
  strip --strip-unneeded "$root/usr/bin/$bin"
done
ln -s crustd "$root/usr/bin/crust"
"$built/crustd" config default > "$root/etc/crust/config.toml"
chmod 0600 "$root/etc/crust/config.toml"
render packaging/crustd.service /usr/bin "$root/lib/systemd/system/crustd.service" 0644
render packaging/crustd.init /usr/bin "$root/etc/init.d/crustd" 0755
install -m 0644 packaging/10-crust-bridge.conflist "$root/usr/share/crust/"
install -m 0644 README.md "$root/usr/share/doc/crust/README.md"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
printf '/etc/crust/config.toml\n/etc/init.d/crustd\n' > "$root/DEBIAN/conffiles"

# The C libraries the binaries link, at the newest symbol versions they use.
glibc=$(objdump -T "$root"/usr/bin/crustd "$root"/usr/bin/crust-monitor | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: crust
Version: $version
Architecture: $arch
Maintainer: crust maintainers <crust@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1, runc | crun, containernetworking-plugins, iptables
Recommends: ca-certificates
Section: admin
Priority: optional
Homepage: https://github.com/crust-runtime/crust
Description: Kubernetes CRI container runtime
 crust serves the Kubernetes Container Runtime Interface (CRI v1) on
 /run/crust/crust.sock for kubelet and crictl: it pulls OCI images, runs pod
 sandboxes networked by CNI plugins and containers through runc or crun, each
 under a small monitor that outlives the daemon. The crust command is a small
 client for the same socket.
CONTROL

mkdir -p "$out"
out=$(cd "$out" && pwd)
deb="$out/crust_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${CRUST_DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
