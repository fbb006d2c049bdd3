#!/usr/bin/env bash
# Watch a site camera through the host, on loopback: a test camera
# (GStreamer's RTSP server) at the site, revtun-site pulling it, revtun-control
# serving RTSP to a viewer account made with the keytool, ffprobe decoding
# through the host (and refused without credentials). With --keep it stays up
# until Ctrl-C so you can watch with ffplay (the URL is printed).
#
# Installs what it needs if missing (Debian packages: GStreamer's RTSP
# server and ffmpeg) and builds in release mode. Everything lives in a
# temporary directory; every process started here is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

# shellcheck source=scripts/common.sh
. scripts/common.sh
ensure_build_tools
ensure_video_peers
echo "== building (release)"
cargo build --release --bins -q
BIN=target/release
start_work revtun-camera

CAM_PORT=$(free_port)
RTSP_PORT=$(free_port)
echo "== site: a test camera at rtsp://127.0.0.1:$CAM_PORT/test (never exposed by the site itself)"
/usr/bin/python3 tests/peers/camera.py "$CAM_PORT" ball 25 >"$WORK/camera.out" 2>"$WORK/camera.log" &
PIDS+=($!)
wait_for ready "$WORK/camera.out"

echo "== host: keytool init, control with the RTSP redirector on 127.0.0.1:$RTSP_PORT"
$BIN/revtun-keytool --state-dir "$WORK/host" init >/dev/null
$BIN/revtun-control --state-dir "$WORK/host" --listen 127.0.0.1:0 \
    --rtsp-listen "127.0.0.1:$RTSP_PORT" --rtp-port 0 --rtcp-port 0 >"$WORK/control.out" 2>"$WORK/control.log" &
PIDS+=($!)
wait_for "^listening on" "$WORK/control.out"
ADDR=$(sed -n 's/^listening on //p' "$WORK/control.out")

echo "== host: issue a keyfile for site 'lobby'; site: enroll and run with camera 'door'"
$BIN/revtun-keytool --state-dir "$WORK/host" issue --site lobby --endpoint "$ADDR" --ttl 1h --out "$WORK/lobby.keyfile" >/dev/null
$BIN/revtun-site run --state-dir "$WORK/site" --keyfile "$WORK/lobby.keyfile" \
    --camera "door=rtsp://127.0.0.1:$CAM_PORT/test" >"$WORK/site.out" 2>"$WORK/site.log" &
PIDS+=($!)
wait_for "tunnel up" "$WORK/site.out"
wait_for "rtsp listening on" "$WORK/control.out"

echo "== host: viewer 'guard' allowed lobby/door (the host serves no anonymous viewer)"
PASSWORD=$($BIN/revtun-keytool --state-dir "$WORK/host" viewer add guard --allow lobby/door | tail -n 1)
wait_for "viewer table updated viewers=1" "$WORK/control.log"
ANON=$(ffprobe -v error -rtsp_transport tcp "rtsp://127.0.0.1:$RTSP_PORT/lobby/door" 2>&1 || true)
echo "without credentials: ${ANON:-no error?}"
echo "$ANON" | grep -q 401 || { echo "camera-demo: FAILED: an anonymous viewer was not refused" >&2; exit 1; }
URL="rtsp://guard:$PASSWORD@127.0.0.1:$RTSP_PORT/lobby/door"
SHOWN="rtsp://guard:***@127.0.0.1:$RTSP_PORT/lobby/door"
echo "== viewer at the host: ffprobe $SHOWN, its default transport (RTP over UDP), 5 s"
FRAMES=$(ffprobe -v error -select_streams v:0 -count_frames -read_intervals %+5 \
    -show_entries stream=codec_name,width,height,nb_read_frames -of compact=p=0 "$URL")
echo "decoded through the tunnel, over UDP from the host: $FRAMES"
echo "$FRAMES" | grep -q "nb_read_frames=[1-9]" || { echo "camera-demo: FAILED: no frames" >&2; exit 1; }
echo "== the same over TCP (RTP inside the RTSP connection), 3 s"
FRAMES=$(ffprobe -v error -rtsp_transport tcp -select_streams v:0 -count_frames -read_intervals %+3 \
    -show_entries stream=nb_read_frames -of compact=p=0 "$URL")
echo "over TCP: $FRAMES"
echo "$FRAMES" | grep -q "nb_read_frames=[1-9]" || { echo "camera-demo: FAILED: no frames over TCP" >&2; exit 1; }
echo "camera pulls by the site: $(grep -c 'client connected' "$WORK/camera.out")"

if [ "$KEEP" = 1 ]; then
    echo
    echo "Watch it:  ffplay '$URL'    (add -rtsp_transport tcp for TCP)"
    echo "A URL for a web front end, valid 10 minutes:"
    $BIN/revtun-keytool --state-dir "$WORK/host" viewer token --allow lobby/door --ttl 10m \
        --url "rtsp://127.0.0.1:$RTSP_PORT" | tail -n 1
    echo "Ctrl-C stops everything."
    while kill -0 "${PIDS[1]}" 2>/dev/null; do sleep 1; done
fi
echo "camera-demo: OK"
