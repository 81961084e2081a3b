"""What every participant of a run must agree on, computed the same way in every deployment.

The coordinator announces a digest of the run's configuration; a hospital whose model, HE
parameters, feature layout, seed, round count or masking differ refuses to train rather than
poison the average. The embedded simulation and the process commands compute it with this one
function.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time

from common.crypto import HEConfig
from common.model import ModelConfig


def run_config_digest(
    *,
    model: ModelConfig,
    he: HEConfig,
    layout_digest: str,
    n_features: int,
    seed: int,
    rounds: int,
    masking: bool,
) -> str:
    material = {
        "masking": masking,
        "model": model.to_dict(),
        "he": he.to_dict(),
        "layout": layout_digest,
        "n_features": n_features,
        "seed": seed,
        "rounds": rounds,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def new_run_id(now: float | None = None) -> str:
    """A fresh run id: the UTC start time and 24 random bits, so that no two runs share one and
    no signed message of an earlier run is valid in a new one."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"run-{stamp}-{secrets.token_hex(3)}"


def hospital_names(count: int) -> tuple[str, ...]:
    """The names the key ceremony, the partition step and the simulation give hospitals."""
    return tuple(f"hospital-{i}" for i in range(1, count + 1))
