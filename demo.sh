#!/usr/bin/env bash
# revtun demo: a host and a site on loopback, provisioned with the keytool.
# Everything lives in a temporary directory and every process started here
# is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")"

# shellcheck source=scripts/common.sh
. scripts/common.sh
ensure_build_tools
echo "== building (release)"
cargo build --release --bins -q
BIN=target/release
start_work revtun-demo

step() { printf '\n== %s\n' "$*"; }

step "host: create the host identity"
$BIN/revtun-keytool --state-dir "$WORK/host" init

WEB_PORT=$(free_port)      # the site's web server (never exposed by the site itself)
HOST_PORT=$(free_port)     # where the host offers it

step "site: a web server on 127.0.0.1:$WEB_PORT (the service to reach)"
mkdir -p "$WORK/www"
echo "hello from the site, through the tunnel" >"$WORK/www/index.html"
head -c $((256 * 1024 * 1024)) /dev/urandom >"$WORK/www/big.bin"
(cd "$WORK/www" && exec python3 -m http.server "$WEB_PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
PIDS+=($!)

step "host: start control (and its data plane) on a free loopback port, exposing demo-site/web on $HOST_PORT"
$BIN/revtun-control --state-dir "$WORK/host" --listen 127.0.0.1:0 \
    --expose "demo-site/web=127.0.0.1:$HOST_PORT" >"$WORK/control.out" 2>"$WORK/control.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "^listening on" "$WORK/control.out" 2>/dev/null && break; sleep 0.05; done
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

step "site: run the agent: dial out, authenticate, offer 'web'"
$BIN/revtun-site run --state-dir "$WORK/site" --service "web=127.0.0.1:$WEB_PORT" >"$WORK/site.out" 2>"$WORK/site.log" &
SITE_PID=$!
PIDS+=($SITE_PID)
for _ in $(seq 100); do grep -q "tunnel up" "$WORK/site.out" 2>/dev/null && break; sleep 0.05; done
cat "$WORK/site.out"
$BIN/revtun-keytool --state-dir "$WORK/host" list

step "client at the host: curl http://127.0.0.1:$HOST_PORT/ (through the tunnel)"
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$HOST_PORT/index.html" 2>/dev/null && break; sleep 0.1; done
SPEED=$(curl -fsS -o "$WORK/big.out" -w '%{speed_download}' "http://127.0.0.1:$HOST_PORT/big.bin")
if cmp -s "$WORK/www/big.bin" "$WORK/big.out"; then
    python3 -c "print('256 MiB through the tunnel, byte-identical, at %.2f Gbit/s (curl + python http.server at the ends)' % ($SPEED * 8 / 1e9))"
else
    echo "demo: FAILED: the file changed in transit" >&2; exit 1
fi

step "host: revoke the site; its tunnel closes and it cannot come back"
$BIN/revtun-keytool --state-dir "$WORK/host" revoke --site demo-site
for _ in $(seq 100); do kill -0 "$SITE_PID" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$SITE_PID" 2>/dev/null; then echo "demo: FAILED: site still running" >&2; exit 1; fi
grep -E "tunnel closed|refused" "$WORK/site.log" | sed 's/^/site log: /'
$BIN/revtun-keytool --state-dir "$WORK/host" list

step "host log (the precise reasons behind every generic refusal)"
sed 's/^/control log: /' "$WORK/control.log"
step "the tour: bulk TCP and video viewers through a fresh host and site, with live numbers"
$BIN/revtun-perf demo

printf '\ndemo: OK\n'
