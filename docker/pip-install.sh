#!/usr/bin/env bash
# hefl-pip-install VENV ARGS...: pip install into VENV, preferring the local wheelhouse, and keep
# the venv to what a container loads at run time.
# OFFLINE=1 installs from /wheelhouse alone; otherwise the package index is used as well.
#
# After every install, VENV loses:
# - bytecode (about 190 MB for the hospital): containers compile what they import at start, in
#   memory (the images set PYTHONDONTWRITEBYTECODE): about 8 s of CPU for a hospital on a 2-core
#   machine (docs/images.md);
# - tensorflow/include: C++ headers, only for compiling custom ops;
# - the test suites of numpy, scipy, pandas and scikit-learn: no module outside them imports
#   them but scipy's `_precompute` developer scripts (`pandas.test()` and friends find them by
#   path);
# - googleapiclient's bundled discovery documents except Drive v3, the only API hefl calls
#   (common/store/gdrive_api.py reads it with discovery_cache.get_static_doc);
# - the static symbol tables of TensorFlow's and Pyfhel's shared objects (strip --strip-unneeded,
#   as Debian ships its libraries): the dynamic loader reads only the dynamic symbols, which stay.
set -euo pipefail
venv=$1; shift
if [ "${OFFLINE:-0}" = 1 ]; then
  "$venv/bin/pip" install --no-compile --no-index --find-links /wheelhouse "$@"
else
  "$venv/bin/pip" install --no-compile --find-links /wheelhouse "$@"
fi

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
find "$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
rm -rf "$site/tensorflow/include"
for package in numpy scipy pandas sklearn; do
  if [ -d "$site/$package" ]; then
    find "$site/$package" -depth -type d -name tests -exec rm -rf {} +
  fi
done
documents=$site/googleapiclient/discovery_cache/documents
if [ -f "$documents/drive.v3.json" ]; then
  find "$documents" -type f ! -name drive.v3.json -delete
fi
for package in tensorflow Pyfhel; do
  [ -d "$site/$package" ] || continue
  find "$site/$package" -type f -name '*.so*' -print0 |
    while IFS= read -r -d '' library; do
      # grep reads all of readelf's output (no -q): an early exit would fail the pipe (pipefail)
      if readelf -S --wide "$library" 2>/dev/null | grep ' \.symtab ' >/dev/null; then
        strip --strip-unneeded "$library"
      fi
    done
done
