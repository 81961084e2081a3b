"""Pages as a person sees them: Debian's ``chromium``, headless, takes screenshots and renders
the DOM (after layout, as the browser shows it). Fails loudly when chromium is missing (``make
monitor-env`` installs it)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

#: Root in a container or CI has no user namespace sandbox; the pages are our own.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError("Debian's chromium is not installed: make monitor-env")
    return path


def _run(args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"chromium {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


def screenshot(url: str, png: Path, *, width: int = 1280, height: int = 1600) -> Path:
    """A PNG of ``url`` at ``width`` x ``height``."""
    profile = png.parent / f".chromium-{png.stem}"
    _run([f"--screenshot={png}", f"--window-size={width},{height}", url], profile, 120)
    if not png.is_file():
        raise AssertionError(f"chromium wrote no screenshot of {url} to {png}")
    return png


def rendered_dom(url: str, scratch: Path) -> str:
    """The page's DOM after chromium loaded and laid it out."""
    return _run(["--dump-dom", url], scratch / ".chromium-dom", 120).stdout


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    distinct_bytes: int  # of the decompressed scanlines: about 1-3 for a blank page


def read_png(path: Path) -> Png:
    """Size and a rough measure of content of a PNG, without an imaging library."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        if kind == b"IDAT":
            chunks.append(data[at + 8 : at + 8 + length])
        at += 12 + length
    pixels = zlib.decompress(b"".join(chunks))
    return Png(width=width, height=height, distinct_bytes=len(set(pixels)))
