#!/usr/bin/env python3
"""Build a Pyfhel wheel that never downloads anything from GitHub, and cache it.

Pyfhel 3.5.0 ships only as a source distribution, and its default build lets Microsoft SEAL's CMake
fetch zlib, zstd and Microsoft GSL from GitHub. That fails in locked-down hospital networks (and on
our CI machines). This script:

1. takes the sdist from a local file (``--sdist`` or ``$PYFHEL_SDIST``) or downloads it from the
   package index, and checks its SHA-256 against the pinned value;
2. switches SEAL's optional compression and GSL support off and forbids CMake downloads
   (``SEAL_BUILD_DEPS=OFF``): this project serializes ciphertexts uncompressed and packs them
   itself (see ``common/crypto``), so nothing is lost;
3. builds the wheel with pip and stores it in ``--wheel-dir`` under a name keyed by the sdist hash
   and the patch, so a second run (or a fresh clone on the same machine) reuses it at once.

Only the standard library is used, so it runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PYFHEL_VERSION = "3.5.0"
SDIST_NAME = f"pyfhel-{PYFHEL_VERSION}.tar.gz"
SDIST_SHA256 = "0375b83b5a83026924f59db25c4efa9f27e1e8a66d004658f4d24195986a04b6"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/e8/4f/"
    "228e4196c08f48c188b9796bc2d60c57e2b227bed45faa1ccfed7e20b965/" + SDIST_NAME
)
# SEAL CMake options forced by the patch; every other option keeps Pyfhel's default.
CMAKE_OVERRIDES = {
    "SEAL_BUILD_DEPS": "OFF",
    "SEAL_USE_MSGSL": "OFF",
    "SEAL_USE_ZLIB": "OFF",
    "SEAL_USE_ZSTD": "OFF",
}
PATCH_ID = hashlib.sha256(repr(sorted(CMAKE_OVERRIDES.items())).encode()).hexdigest()[:12]


def log(message: str) -> None:
    print(f"[build_pyfhel] {message}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ssl_context() -> ssl.SSLContext:
    """Trust the same CA bundle pip is told to trust (sites behind TLS-intercepting proxies)."""
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).exists() else None)


def fetch_sdist(dest: Path, local: str | None) -> Path:
    target = dest / SDIST_NAME
    if local:
        shutil.copyfile(local, target)
    else:
        url = os.environ.get("PYFHEL_SDIST_URL", SDIST_URL)
        log(f"downloading {url}")
        with urllib.request.urlopen(url, context=ssl_context(), timeout=120) as response:
            target.write_bytes(response.read())
    actual = sha256_of(target)
    if actual != SDIST_SHA256:
        raise SystemExit(
            f"[build_pyfhel] {SDIST_NAME}: sha256 {actual} does not match the pinned "
            f"{SDIST_SHA256}; refusing to build an unverified source"
        )
    return target


def patch_pyproject(text: str) -> str:
    """Force CMAKE_OVERRIDES inside ``[cpplibraries.SEAL.cmake_opts]``."""
    header = "[cpplibraries.SEAL.cmake_opts]"
    if header not in text:
        raise SystemExit(f"[build_pyfhel] {header} not found in Pyfhel's pyproject.toml")
    for key, value in CMAKE_OVERRIDES.items():
        pattern = re.compile(rf"^(\s*){key}\s*=.*$", re.MULTILINE)
        if pattern.search(text):
            text = pattern.sub(rf"\g<1>{key} = '{value}'", text, count=1)
        else:
            text = text.replace(header, f"{header}\n    {key} = '{value}'", 1)
    return text


def build(wheel_dir: Path, local_sdist: str | None, python: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="pyfhel-build-") as tmp:
        work = Path(tmp)
        sdist = fetch_sdist(work, local_sdist)
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = work / f"pyfhel-{PYFHEL_VERSION}"
        pyproject = source / "pyproject.toml"
        pyproject.write_text(patch_pyproject(pyproject.read_text()))
        out = work / "wheels"
        log("building the wheel (SEAL compiles for a few minutes on 2 cores)")
        env = dict(os.environ, FETCHCONTENT_FULLY_DISCONNECTED="ON")
        subprocess.run(
            [python, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)],
            check=True,
            env=env,
            stdout=sys.stderr,  # stdout carries only the wheel path (read by the Makefile)
        )
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise SystemExit(f"[build_pyfhel] expected one wheel, found {built}")
        wheel_dir.mkdir(parents=True, exist_ok=True)
        final = wheel_dir / built[0].name
        shutil.copyfile(built[0], final.with_suffix(".tmp"))
        os.replace(final.with_suffix(".tmp"), final)
        return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, required=True, help="cache folder for the wheel")
    parser.add_argument("--sdist", default=os.environ.get("PYFHEL_SDIST"), help="local sdist")
    parser.add_argument("--python", default=sys.executable, help="interpreter to build for")
    args = parser.parse_args(argv)

    tag = (
        subprocess.run(
            [
                args.python,
                "-c",
                "import sys, sysconfig;"
                "print(sys.implementation.cache_tag, sysconfig.get_platform())",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .replace(" ", "-")
    )
    stamp = args.wheel_dir / f".pyfhel-{PYFHEL_VERSION}-{SDIST_SHA256[:12]}-{PATCH_ID}-{tag}.ok"
    if stamp.exists():
        wheel = Path(stamp.read_text().strip())
        if wheel.exists():
            log(f"cached: {wheel}")
            print(wheel)
            return 0
    wheel = build(args.wheel_dir, args.sdist, args.python)
    stamp.write_text(f"{wheel}\n")
    log(f"built: {wheel}")
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
