"""Render a deeplense_ssl HTML report in headless Chromium and save a PNG screenshot.

Checks by eye that the self-contained report renders (figures embedded, tables laid out). Not a
test: it needs a Chromium binary (`apt-get install -y chromium` on Debian/Ubuntu).

Usage::

    python benchmarks/screenshot_report.py REPORT.html --out report.png [--height 4000]

Chromium runs with ``--headless --no-sandbox --disable-gpu`` and every background service
off, in a fresh temporary profile that is deleted afterwards; it never touches the network
(the report has no external resources).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str:
    """Path of the first Chromium-like browser on PATH."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found; install it with `apt-get install -y chromium`.")


def screenshot(report: Path, out: Path, width: int = 1400, height: int = 4000) -> Path:
    """Open ``report`` (an HTML file) in headless Chromium and write a PNG of the page."""
    report = report.resolve()
    if not report.is_file():
        sys.exit(f"{report}: no such report file.")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            find_browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={width},{height}",
            report.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"chromium failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the HTML report")
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args()
    path = screenshot(args.report, args.out, args.width, args.height)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
