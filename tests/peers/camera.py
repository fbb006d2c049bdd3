#!/usr/bin/env python3
"""A camera stand-in: GStreamer's RTSP server on 127.0.0.1, TCP only (or,
with --udp-only, UDP only: a SETUP for TCP gets 461).

Usage: camera.py PORT [PATTERN] [KEYINT] [--auth basic|digest --user U --password P] [--udp-only].
Serves rtsp://127.0.0.1:PORT/test (H.264, 640x360, 25 fps, a keyframe every
KEYINT frames, default 25). Prints 'ready' when serving and 'client
connected' for every RTSP client, so tests can count how many times the
stream left the camera. With --auth, only USER with PASSWORD may describe
and play the stream (RTSP Basic or Digest authentication; others get 401).
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("port")
parser.add_argument("pattern", nargs="?", default="ball")
parser.add_argument("keyint", nargs="?", type=int, default=25)
parser.add_argument("--auth", choices=["basic", "digest"])
parser.add_argument("--user", default="user")
parser.add_argument("--password", default="secret")
parser.add_argument("--udp-only", action="store_true", help="refuse RTP over TCP (461), as many encoders do")
parser.add_argument("--audio", choices=["opus", "aac"], help="add an audio track")
args = parser.parse_args()
port, pattern, keyint = args.port, args.pattern, args.keyint
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern={pattern} ! video/x-raw,width=640,height=360,framerate=25/1 "
    f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={keyint} bitrate=1000 "
    "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 "
    + {
        None: "",
        "opus": "audiotestsrc is-live=true ! opusenc ! rtpopuspay name=pay1 pt=97 ",
        "aac": "audiotestsrc is-live=true ! audioconvert ! avenc_aac ! rtpmp4gpay name=pay1 pt=97 ",
    }[args.audio]
    + ")"
)
factory.set_shared(True)
factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP if args.udp_only else GstRtsp.RTSPLowerTrans.TCP)
if args.auth:
    # The user's token carries a role; the factory lets that role see
    # (access) and start (construct) the stream. Anyone else gets 401.
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    if args.auth == "digest":
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        auth.add_digest(args.user, args.password, token)
    else:
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
    server.set_auth(auth)
    factory.add_role_from_structure(
        Gst.Structure.new_from_string(
            f"viewer, {GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS}=(boolean)true, "
            f"{GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT}=(boolean)true"
        )
    )
server.get_mount_points().add_factory("/test", factory)


def on_client(_server, _client):
    print("client connected", flush=True)


server.connect("client-connected", on_client)
if server.attach(None) == 0:
    print("cannot bind", flush=True)
    sys.exit(1)
print("ready", flush=True)
GLib.MainLoop().run()
