#!/usr/bin/env python3
"""A camera stand-in: GStreamer's RTSP server on 127.0.0.1, TCP only.

Usage: camera.py PORT [PATTERN] [KEYINT]. Serves rtsp://127.0.0.1:PORT/test
(H.264, 640x360, 25 fps, a keyframe every KEYINT frames, default 25). Prints 'ready' when serving
and 'client connected' for every RTSP client, so tests can count how many
times the stream left the camera.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

port = sys.argv[1]
pattern = sys.argv[2] if len(sys.argv) > 2 else "ball"
keyint = int(sys.argv[3]) if len(sys.argv) > 3 else 25
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern={pattern} ! video/x-raw,width=640,height=360,framerate=25/1 "
    f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={keyint} bitrate=1000 "
    "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
factory.set_shared(True)
factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
server.get_mount_points().add_factory("/test", factory)


def on_client(_server, _client):
    print("client connected", flush=True)


server.connect("client-connected", on_client)
if server.attach(None) == 0:
    print("cannot bind", flush=True)
    sys.exit(1)
print("ready", flush=True)
GLib.MainLoop().run()
