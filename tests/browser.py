"""Headless Chromium for the page tests: Debian's `chromium` package, run with networking shut off.

Where no Chromium is installed the browser tests skip with the reason — unless NMT_REQUIRE_BROWSER=1 (set by .ci/run,
which installs the package), where a missing browser fails them instead, so CI cannot pass without running them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# No network at all: nothing resolves, background services are off. The page must not need any of it.
OFFLINE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
                 "--enable-logging=stderr", "--v=0"]


def chromium() -> str:
    """The browser's path, or skip (fail under NMT_REQUIRE_BROWSER=1)."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    reason = "needs headless Chromium (Debian: apt-get install chromium)"
    if os.environ.get("NMT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"NMT_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def run(page: Path, profile: Path, *args: str, fragment: str = "", timeout: float = 120
        ) -> subprocess.CompletedProcess:
    """Open ``page`` (a local file, ``#fragment`` appended) with ``args`` (e.g. --dump-dom, --screenshot=PATH) in a
    fresh ``profile`` folder; stdout and stderr as text. The page gets 10 s of virtual time to run its scripts."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    command = [chromium(), *OFFLINE_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def console_lines(stderr: str) -> list[str]:
    """What the page wrote to the console, and its uncaught errors: Chromium logs both as CONSOLE lines."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]
