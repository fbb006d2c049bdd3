# Shared by demo.sh, camera-demo.sh and .ci/run (sourced, not run).

# Runs a command as root (directly, or through sudo).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs Debian packages with one `apt-get update` first.
apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# curl, python3 and a C compiler from Debian's packages, a Rust toolchain
# through rustup, each only when missing.
ensure_build_tools() {
    local need=()
    command -v curl >/dev/null || need+=(curl ca-certificates)
    command -v python3 >/dev/null || need+=(python3)
    command -v cc >/dev/null || need+=(gcc libc6-dev)
    # protoc: the etcd-client crate (fleet mode) compiles etcd's protocol.
    command -v protoc >/dev/null || need+=(protobuf-compiler)
    if [ ${#need[@]} -gt 0 ]; then
        if ! command -v apt-get >/dev/null; then
            echo "please install: ${need[*]}" >&2
            exit 1
        fi
        echo "== installing ${need[*]}"
        apt_install "${need[@]}"
    fi
    if ! command -v cargo >/dev/null; then
        if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
            echo "== installing a Rust toolchain (rustup, minimal profile)"
            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        fi
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
}

# The real video peers of the tests (docs/video.md): GStreamer's RTSP
# server as the camera, ffprobe/ffmpeg as viewers; only when missing.
ensure_video_peers() {
    local need=()
    # curl: a real HTTP client in the fault tests (tests/tests/faults.rs).
    command -v curl >/dev/null || need+=(curl ca-certificates)
    # prlimit (descriptor-limit tests) and systemd-analyze (unit checks).
    command -v prlimit >/dev/null || need+=(util-linux)
    command -v systemd-analyze >/dev/null || need+=(systemd)
    # VLC's RTSP server: a camera that streams only over UDP.
    command -v cvlc >/dev/null || need+=(vlc-bin vlc-plugin-base)
    # ip: network namespaces for the multicast tests.
    command -v ip >/dev/null || need+=(iproute2)
    # cargo deb's $auto dependencies (scripts/package.sh).
    command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
    # A real etcd for the fleet tests (tests/tests/fleet.rs start their
    # own on loopback), and protoc for the etcd-client crate.
    command -v etcd >/dev/null || need+=(etcd-server)
    command -v protoc >/dev/null || need+=(protobuf-compiler)
    if ! command -v ffprobe >/dev/null ||
        ! /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null; then
        need+=(ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-base
            gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
            gstreamer1.0-libav gstreamer1.0-rtsp python3-gst-1.0 gir1.2-gst-rtsp-server-1.0)
    fi
    if [ ${#need[@]} -gt 0 ]; then
        echo "== installing the test peers (Debian packages): ${need[*]}"
        no_service_starts apt_install "${need[@]}"
    fi
}

# Runs "$@" with package services kept from starting (etcd-server's own
# instance must not run: the tests start theirs): a policy-rc.d that
# exits 101, removed afterwards unless one was already there.
no_service_starts() {
    local policy=/usr/sbin/policy-rc.d made=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        made=1
    fi
    local rc=0
    "$@" || rc=$?
    if [ -n "$made" ]; then as_root rm -f "$policy"; fi
    return $rc
}

# A temporary work directory in $WORK; every PID added to PIDS is killed
# and the directory removed on exit.
start_work() {
    WORK=$(mktemp -d -t "$1.XXXXXX")
    PIDS=()
    trap 'for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for a line matching $1 in file $2 (then shows $2's log).
wait_for() {
    for _ in $(seq 200); do
        grep -q "$1" "$2" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "timed out waiting for '$1' in $2" >&2
    cat "${2%.out}.log" >&2 || true
    exit 1
}
