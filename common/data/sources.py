"""Where the bundled example data lives: one default for the CLI, the tests and the benchmarks.

The data sit beside the checkout (``../shared/data``): UCI Diabetes-130 and the original project's
CSV. ``HEFL_SHARED_DATA`` points elsewhere; a user's own data arrive through ``--dataset`` (a whole
CSV to split into simulated hospitals) or ``--csv`` (one hospital's own rows).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

SHARED_DATA_ENV: Final = "HEFL_SHARED_DATA"
_CHECKOUT: Final = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """The folder holding ``diabetes130/`` and ``seed/`` (``$HEFL_SHARED_DATA`` overrides)."""
    return Path(os.environ.get(SHARED_DATA_ENV) or _CHECKOUT.parent / "shared" / "data")


#: UCI Diabetes-130 (101,766 encounters): the default dataset of ``simulate`` and ``partition``.
DEFAULT_DATASET: Final = shared_data_dir() / "diabetes130" / "diabetic_data.csv.gz"
#: The original project's single-hospital CSV (schema ``johns_hospital``).
SEED_DATASET: Final = shared_data_dir() / "seed" / "johns_hospital_data.csv"
