"""A hospital's own data, ready to train on: the one loader every deployment uses.

The process command reads a hospital's CSV with :func:`load_local_data`; the embedded
simulation splits one CSV into hospitals and hands each part to :func:`encode_local`. Both split
by patient with the hospital's own split seed (``common.fedavg.split_seed``) and encode with the
schema's fixed feature layout, so a hospital gets the same rows and features in every deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.features import FeatureEncoder
from common.data.partition import split_by_patient
from common.data.reader import read_csv
from common.data.schema import Schema
from common.fedavg import split_seed


@dataclass(frozen=True, eq=False)
class LocalData:
    """A hospital's own rows, already encoded; they never leave its process."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def encode_local(
    frame: pd.DataFrame, schema: Schema, hospital: str, *, seed: int, test_fraction: float
) -> LocalData:
    """Split ``frame`` by patient into train and hold-out, and encode both."""
    train, test = split_by_patient(
        frame, schema, test_fraction=test_fraction, seed=split_seed(seed, hospital)
    )
    encoder = FeatureEncoder(schema)
    x_train, y_train = encoder.transform(train)
    x_test, y_test = encoder.transform(test)
    return LocalData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def load_local_data(
    csv: Path, schema: Schema, hospital: str, *, seed: int, test_fraction: float
) -> LocalData:
    """Read a hospital's own CSV (validated against ``schema``) and :func:`encode_local` it."""
    return encode_local(
        read_csv(csv, schema), schema, hospital, seed=seed, test_fraction=test_fraction
    )
