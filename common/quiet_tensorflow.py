"""Load TensorFlow without its start-up noise on the terminal.

On a CPU machine TensorFlow's native code writes lines such as "All log messages before
absl::InitializeLog() ...", "Could not find cuda drivers on your machine" and "failed call to
cuInit" straight to file descriptor 2, before Python's logging exists and whatever
``TF_CPP_MIN_LOG_LEVEL`` says. :func:`load` imports TensorFlow and Keras and probes the devices
(which is when CUDA is tried) with descriptor 2 pointed at a temporary file, then restores it.
What was captured is logged at DEBUG; when the ``hefl`` loggers are at DEBUG
(``--log-level DEBUG``) nothing is hidden at all. Call :func:`load` before importing TensorFlow;
the later imports find the modules loaded and print nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

logger = logging.getLogger("hefl.tensorflow")


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Point descriptor 2 at a temporary file; yield a list that receives what was written."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.extend(sink.read().decode(errors="replace").splitlines())


@functools.cache
def load() -> None:
    """Import TensorFlow and Keras once, quietly unless the log level is DEBUG."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read by TensorFlow's first import
    verbose = logging.getLogger("hefl").isEnabledFor(logging.DEBUG)
    context: contextlib.AbstractContextManager[list[str]] = (
        contextlib.nullcontext([]) if verbose else native_stderr_captured()
    )
    with context as captured:
        import keras  # noqa: F401  (loaded here so that later imports are silent)
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA is probed (and fails loudly) on first use
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    for line in captured:
        logger.debug("tensorflow_startup line=%r", line)
