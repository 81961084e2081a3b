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
3. adds ``Pyfhel.encrypt_symmetric_bytes(ptxt) -> bytes`` (``SOURCE_EDITS``, about 30 lines in
   Afseal.h/.cpp, Afhel.pxd, Pyfhel.pxd/.pyx): hospitals hold the secret key, so they encrypt with
   it (SEAL's ``encrypt_symmetric``; CKKS at the plaintext's level, BFV/BGV at the first data
   level) and send SEAL's *seeded* serialization, uncompressed, whose second polynomial is the
   64-byte seed that draws it: about half of ``to_bytes("none")``. ``PyCtxt(pyfhel=...,
   bytestring=...)`` expands it with the context alone. Each edit replaces one exact anchor and
   stops the build if that anchor is missing or repeated, so a changed sdist fails loudly;
4. builds the wheel with pip and stores it in ``--wheel-dir`` under a name keyed by the sdist hash
   and ``PATCH_ID`` (a hash of the CMake overrides and the source edits), so a second run (or a
   fresh clone on the same machine) reuses it at once, and a changed patch never reuses an old
   wheel.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

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


class SourceEdit(NamedTuple):
    """Replace the one occurrence of ``anchor`` in ``path`` (relative to the sdist) by ``text``."""

    path: str
    anchor: str
    text: str


_AFSEAL_H_ANCHOR = "  size_t load_secret_key(istream &in_stream);\n"
_AFSEAL_CPP_ANCHOR = "// SAVE/LOAD RELINKEY\n"
_AFHEL_PXD_ANCHOR = "        int total_coeff_modulus_bit_count() except +\n"
_PYFHEL_PXD_ANCHOR = "    cpdef PyCtxt encryptBGV(self, int64_t[:] arr, PyCtxt ctxt=*)\n"
_PYFHEL_PYX_ANCHOR = "    cpdef PyCtxt encryptBGV(self, int64_t[:] arr, PyCtxt ctxt=None):\n"
# Pyfhel.encrypt_symmetric_bytes: secret-key encryption saved in SEAL's seeded form.
SOURCE_EDITS = (
    SourceEdit(
        "Pyfhel/Afhel/Afseal.h",
        _AFSEAL_H_ANCHOR,
        _AFSEAL_H_ANCHOR
        + "  size_t encrypt_symmetric_save(AfPtxt &ptxt, ostream &out_stream); // hefl patch\n",
    ),
    SourceEdit(
        "Pyfhel/Afhel/Afseal.cpp",
        _AFSEAL_CPP_ANCHOR,
        """// hefl patch: encrypt with the secret key (CKKS: at ptxt's level; BFV/BGV: first
// data level) and save SEAL's seeded form, c1 replaced by its PRNG seed, uncompressed.
// No secret key: std::logic_error (get_secretKey).
size_t Afseal::encrypt_symmetric_save(AfPtxt &ptxt, ostream &out_stream)
{
  Encryptor symmetric(*(this->get_context()), *(this->get_secretKey()));
  return (size_t)symmetric.encrypt_symmetric(_dyn_p(ptxt)).save(out_stream, compr_mode_type::none);
}

"""
        + _AFSEAL_CPP_ANCHOR,
    ),
    SourceEdit(
        "Pyfhel/Afhel/Afhel.pxd",
        _AFHEL_PXD_ANCHOR,
        _AFHEL_PXD_ANCHOR
        + "        size_t encrypt_symmetric_save(AfPtxt &ptxt, ostream &out_stream) except +\n",
    ),
    SourceEdit(
        "Pyfhel/Pyfhel.pxd",
        _PYFHEL_PXD_ANCHOR,
        "    cpdef bytes encrypt_symmetric_bytes(self, PyPtxt ptxt)\n" + _PYFHEL_PXD_ANCHOR,
    ),
    SourceEdit(
        "Pyfhel/Pyfhel.pyx",
        _PYFHEL_PYX_ANCHOR,
        '''    cpdef bytes encrypt_symmetric_bytes(self, PyPtxt ptxt):
        """Encrypts ptxt with the secret key into SEAL's seeded ciphertext bytes (hefl patch).

        CKKS: at ptxt's level; BFV/BGV: at the first data level. Uncompressed; the second
        polynomial is stored as its 64-byte PRNG seed, about half of to_bytes("none").
        PyCtxt(pyfhel=..., bytestring=...) expands it with the context alone.

        Raise:
            RuntimeError: if no secret key is loaded.
        """
        cdef ostringstream ostr
        if ptxt is None or ptxt._ptr_ptxt == NULL:
            raise TypeError("<Pyfhel ERROR> PyPtxt Plaintext is empty")
        (<Afseal*>self.afseal).encrypt_symmetric_save(deref(ptxt._ptr_ptxt), ostr)
        return ostr.str()

'''
        + _PYFHEL_PYX_ANCHOR,
    ),
)


def patch_id(cmake_overrides: Mapping[str, str], source_edits: Sequence[SourceEdit]) -> str:
    """A short hash of everything the patch changes: part of the cached wheel's key."""
    patch = repr((sorted(cmake_overrides.items()), [tuple(edit) for edit in source_edits]))
    return hashlib.sha256(patch.encode()).hexdigest()[:12]


PATCH_ID = patch_id(CMAKE_OVERRIDES, SOURCE_EDITS)


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


def apply_source_edits(source: Path, edits: Sequence[SourceEdit] = SOURCE_EDITS) -> None:
    """Apply each edit to the extracted sdist; stop if its anchor is not there exactly once."""
    for edit in edits:
        path = source / edit.path
        text = path.read_bytes().decode("utf-8")  # bytes: keep the file's line endings
        found = text.count(edit.anchor)
        if found != 1:
            raise SystemExit(
                f"[build_pyfhel] {edit.path}: expected the anchor {edit.anchor.strip()!r} once, "
                f"found it {found} times; Pyfhel's source changed, update SOURCE_EDITS"
            )
        path.write_bytes(text.replace(edit.anchor, edit.text).encode("utf-8"))


def build(wheel_dir: Path, local_sdist: str | None, python: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="pyfhel-build-") as tmp:
        work = Path(tmp)
        sdist = fetch_sdist(work, local_sdist)
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = work / f"pyfhel-{PYFHEL_VERSION}"
        pyproject = source / "pyproject.toml"
        pyproject.write_text(patch_pyproject(pyproject.read_text()))
        apply_source_edits(source)
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
