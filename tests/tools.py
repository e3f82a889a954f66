"""Say plainly which test tools this machine has, before the suite runs (`make test`)."""

from __future__ import annotations

import os
import shutil
import sys

import imageio_ffmpeg

INTEROP = {
    "rtmpdump": "Debian package rtmpdump (librtmp player)",
    "gst-launch-1.0": "Debian packages gstreamer1.0-tools, -plugins-good/-bad, -libav",
}


def main() -> int:
    print(f"ffmpeg: {imageio_ffmpeg.get_ffmpeg_exe()} (imageio-ffmpeg wheel)")
    missing = [tool for tool in INTEROP if shutil.which(tool) is None]
    for tool, source in INTEROP.items():
        print(f"{tool}: {shutil.which(tool) or 'MISSING, from ' + source}")
    if missing:
        print("Interop tests will NOT run on this machine (`.ci/run` installs the tools).")
        if os.environ.get("RTMPMATE_REQUIRE_INTEROP"):
            print("RTMPMATE_REQUIRE_INTEROP is set: failing.", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
