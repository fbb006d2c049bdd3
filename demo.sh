#!/usr/bin/env bash
# revtun demo: a host and a site on loopback, provisioned with the keytool.
# Everything lives in a temporary directory and every process started here
# is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null; then
    echo "demo: needs a Rust toolchain (cargo) and a C compiler" >&2
    exit 1
fi
echo "== building (release)"
cargo build --release --bins -q
BIN=target/release
WORK=$(mktemp -d -t revtun-demo.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "host: create the host identity"
$BIN/revtun-keytool --state-dir "$WORK/host" init

step "host: start control on a free loopback port"
$BIN/revtun-control --state-dir "$WORK/host" --listen 127.0.0.1:0 >"$WORK/control.out" 2>"$WORK/control.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "listening on" "$WORK/control.out" 2>/dev/null && break; sleep 0.05; done
ADDR=$(sed -n 's/^listening on //p' "$WORK/control.out")
[ -n "$ADDR" ] || { echo "control did not start:"; cat "$WORK/control.log"; exit 1; }
echo "control listening on $ADDR"

step "host: issue a keyfile for site 'demo-site'"
$BIN/revtun-keytool --state-dir "$WORK/host" issue --site demo-site --endpoint "$ADDR" --ttl 1h --out "$WORK/demo-site.keyfile"
$BIN/revtun-keytool inspect "$WORK/demo-site.keyfile"

step "site: enroll (spends the token, keeps its own key and certificate)"
$BIN/revtun-site enroll --keyfile "$WORK/demo-site.keyfile" --state-dir "$WORK/site"
ls -l "$WORK/site"

step "attacker: the same keyfile again (must be refused)"
if $BIN/revtun-site enroll --keyfile "$WORK/demo-site.keyfile" --state-dir "$WORK/site2"; then
    echo "demo: FAILED: a spent token was accepted" >&2; exit 1
fi

step "site: hold the tunnel with the site certificate"
$BIN/revtun-site run --state-dir "$WORK/site" >"$WORK/site.out" 2>"$WORK/site.log" &
SITE_PID=$!
PIDS+=($SITE_PID)
for _ in $(seq 100); do grep -q "tunnel up" "$WORK/site.out" 2>/dev/null && break; sleep 0.05; done
cat "$WORK/site.out"
$BIN/revtun-keytool --state-dir "$WORK/host" list

step "host: revoke the site; its tunnel closes and it cannot come back"
$BIN/revtun-keytool --state-dir "$WORK/host" revoke --site demo-site
for _ in $(seq 100); do kill -0 "$SITE_PID" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$SITE_PID" 2>/dev/null; then echo "demo: FAILED: site still running" >&2; exit 1; fi
grep -E "tunnel closed|refused" "$WORK/site.log" | sed 's/^/site log: /'
$BIN/revtun-keytool --state-dir "$WORK/host" list

step "host log (the precise reasons behind every generic refusal)"
sed 's/^/control log: /' "$WORK/control.log"
printf '\ndemo: OK\n'
