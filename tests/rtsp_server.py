"""An RTSP server for the live tests: GStreamer's gst-rtsp-server serving one H.264 MP4
at rtsp://HOST:PORT/clip (HOST 127.0.0.1 unless given), paced in real time as a camera
would be.

Run by Debian's /usr/bin/python3 (python3-gi, gir1.2-gst-rtsp-server-1.0), not the
project's venv: `/usr/bin/python3 tests/rtsp_server.py PORT CLIP.mp4 [HOST]`. Prints "ready" once
it listens; stops on SIGTERM.
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(port: str, clip: str, host: str = "127.0.0.1") -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(host)
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{clip}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )'
    )
    server.get_mount_points().add_factory("/clip", factory)
    if server.attach(None) == 0:
        sys.exit(f"could not listen on {host}:{port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main(*sys.argv[1:4])
