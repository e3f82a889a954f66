"""Say plainly which test tools this machine has, before the suite runs (`make test`)."""

from __future__ import annotations

import os
import sys

import imageio_ffmpeg

from tests.e2e.conftest import REQUIREMENTS, missing_requirements


def main() -> int:
    print(f"ffmpeg: {imageio_ffmpeg.get_ffmpeg_exe()} (imageio-ffmpeg wheel)")
    failed = False
    for marker, needs in REQUIREMENTS.items():
        missing = missing_requirements(marker)
        if not missing:
            print(f"{marker} tests: will run ({', '.join(needs)} present)")
            continue
        print(f"{marker} tests: will NOT run, missing {', '.join(missing)} (.ci/run installs them)")
        failed = failed or bool(os.environ.get("RTMPMATE_REQUIRE_INTEROP"))
    if failed:
        print("RTMPMATE_REQUIRE_INTEROP is set: failing.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
