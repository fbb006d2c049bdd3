#!/usr/bin/env bash
# Builds the Debian package (target/debian/revtun_*.deb) with cargo-deb:
# every binary (release build), the systemd units, the example settings.
# Prints its contents (dpkg-deb -c) and checks the expected files are in.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo build --release --workspace --bins
rm -f target/debian/revtun_*.deb
cargo deb -p revtun-control --no-build --strip
deb=$(ls target/debian/revtun_*.deb)
dpkg-deb -c "$deb" | tee target/debian/contents.txt
for f in usr/bin/revtun-control usr/bin/revtun-dataplane usr/bin/revtun-keytool \
    usr/bin/revtun-site lib/systemd/system/revtun-control.service \
    lib/systemd/system/revtun-site.service usr/share/doc/revtun/examples/host.toml \
    usr/share/doc/revtun/examples/site.toml; do
    grep -q " \./$f\$" target/debian/contents.txt || { echo "missing from $deb: $f" >&2; exit 1; }
done
# Through a file: `grep -q` stops reading early, and under pipefail the
# SIGPIPE it gives dpkg-deb would fail the check although postinst is in.
dpkg-deb -I "$deb" > target/debian/info.txt
grep -q postinst target/debian/info.txt || { echo "no postinst in $deb" >&2; exit 1; }
echo "package ok: $deb"
