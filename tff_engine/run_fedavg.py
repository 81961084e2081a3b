"""Weighted FedAvg with TensorFlow Federated, run inside the separate TFF environment.

This file runs under ``.venv-tff/bin/python`` (tensorflow 2.14, numpy 1.25,
tensorflow-federated 0.87) and must not import the ``hefl`` packages, which need numpy 2. It
uses only the standard library, numpy, tensorflow and tensorflow_federated.

    python run_fedavg.py INPUT_DIR OUTPUT_DIR

INPUT_DIR (written by ``hefl.tff.export_inputs`` in the main environment):

- ``config.json``: hidden_units, activation, learning_rate, batch_size, local_epochs, rounds,
  hospitals (names), n_features, weight_shapes, and server_optimizer (name, learning_rate,
  momentum, beta_1, beta_2, epsilon, initial_preconditioner: ``common.server_optimizer``);
- ``data.npz``: per hospital ``i``: ``x_i`` and ``y_i`` (float32 training rows) and ``order_i``
  (int32, rounds x local_epochs x rows: the exact row order our LocalTrainer uses in each
  epoch of each round), and ``initial_weights`` (flat float32, Keras weight order).

OUTPUT_DIR receives ``weights.npz`` (``rounds``: the global model after each round, one flat
float32 row per round) and ``metrics.json`` (TFF's own per-round training metrics and
timings). The algorithm is ``tff.learning.algorithms.build_weighted_fed_avg`` with the same
Keras architecture, client SGD at the configured learning rate, the configured server optimizer
(fedavg: server SGD, at 1.0 plain FedAvg; fedavgm: SGD with momentum; fedadam: Adam; fedyogi:
Yogi) and clients weighted by their number of training examples.

TFF starts a ``worker_binary`` child process that outlives Python; this script ends its own
children before it exits, and the caller also ends the script's process group.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

OUTPUT_ACTIVATION = "sigmoid"


def build_keras_model(config: dict) -> tf.keras.Model:
    """The same network as ``common.model.build_model``: Dense hidden layers, one sigmoid unit."""
    layers = [tf.keras.Input(shape=(config["n_features"],), name="features")]
    layers.extend(
        tf.keras.layers.Dense(units, activation=config["activation"], name=f"hidden_{index}")
        for index, units in enumerate(config["hidden_units"], start=1)
    )
    layers.append(tf.keras.layers.Dense(1, activation=OUTPUT_ACTIVATION, name="output"))
    return tf.keras.Sequential(layers, name="readmission_mlp")


def server_optimizer(settings: dict | None) -> tff.learning.optimizers.Optimizer:
    """TFF's optimizer for our server optimizer settings (none: plain FedAvg, server SGD at 1)."""
    if settings is None:
        return tff.learning.optimizers.build_sgdm(learning_rate=1.0)
    name, rate = settings["name"], settings["learning_rate"]
    if name == "fedavg":
        return tff.learning.optimizers.build_sgdm(learning_rate=rate)
    if name == "fedavgm":
        return tff.learning.optimizers.build_sgdm(learning_rate=rate, momentum=settings["momentum"])
    adaptive = {k: settings[k] for k in ("beta_1", "beta_2", "epsilon")}
    if name == "fedadam":
        return tff.learning.optimizers.build_adam(learning_rate=rate, **adaptive)
    if name == "fedyogi":
        return tff.learning.optimizers.build_yogi(
            learning_rate=rate,
            initial_preconditioner_value=settings["initial_preconditioner"],
            **adaptive,
        )
    raise ValueError(f"unknown server optimizer {name!r}")


def split_weights(flat: np.ndarray, shapes: list[list[int]]) -> list[np.ndarray]:
    arrays, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        arrays.append(flat[offset : offset + size].reshape(shape).astype(np.float32))
        offset += size
    if offset != flat.size:
        raise ValueError(f"initial weights hold {flat.size} values, the model needs {offset}")
    return arrays


def client_dataset(
    x: np.ndarray, y: np.ndarray, orders: np.ndarray, batch_size: int
) -> tf.data.Dataset:
    """One round of a client's local training: each epoch in its own order, batched per epoch.

    Batches never straddle epochs (as in Keras ``fit``, one call per epoch), so the batches are
    exactly the ones our LocalTrainer sees.
    """
    dataset = None
    for order in orders:
        epoch = tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(batch_size)
        dataset = epoch if dataset is None else dataset.concatenate(epoch)
    return dataset


def end_children() -> None:
    """Kill and reap this process's children (TFF's worker_binary outlives the interpreter)."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[1] == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
                os.waitpid(int(entry), 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def run(input_dir: Path, output_dir: Path) -> None:
    config = json.loads((input_dir / "config.json").read_text())
    data = np.load(input_dir / "data.npz")
    hospitals = config["hospitals"]
    rounds, batch_size = config["rounds"], config["batch_size"]
    xs = [data[f"x_{i}"] for i in range(len(hospitals))]
    ys = [data[f"y_{i}"].reshape(-1, 1).astype(np.float32) for i in range(len(hospitals))]
    orders = [data[f"order_{i}"] for i in range(len(hospitals))]
    initial = split_weights(data["initial_weights"], config["weight_shapes"])

    input_spec = (
        tf.TensorSpec([None, config["n_features"]], tf.float32),
        tf.TensorSpec([None, 1], tf.float32),
    )

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            build_keras_model(config),
            loss=tf.keras.losses.BinaryCrossentropy(),
            input_spec=input_spec,
        )

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(
            learning_rate=config["learning_rate"]
        ),
        server_optimizer_fn=server_optimizer(config.get("server_optimizer")),
        client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
    )
    state = process.initialize()
    start = process.get_model_weights(state)
    shapes = [list(w.shape) for w in start.trainable]
    if shapes != [list(s) for s in config["weight_shapes"]]:
        raise ValueError(f"TFF model weight shapes {shapes} != {config['weight_shapes']}")
    state = process.set_model_weights(
        state, tff.learning.models.ModelWeights(trainable=initial, non_trainable=[])
    )

    history, records = [], []
    for round_ in range(1, rounds + 1):
        started = time.perf_counter()
        clients = [
            client_dataset(x, y, order[round_ - 1], batch_size)
            for x, y, order in zip(xs, ys, orders, strict=True)
        ]
        result = process.next(state, clients)
        state = result.state
        weights = process.get_model_weights(state).trainable
        history.append(np.concatenate([np.asarray(w, np.float32).ravel() for w in weights]))
        train = result.metrics["client_work"]["train"]
        record = {
            "round": round_,
            "seconds": time.perf_counter() - started,
            "tff_train_loss": float(train["loss"]),
            "tff_num_examples": int(train["num_examples"]),
            "tff_num_batches": int(train["num_batches"]),
            "update_non_finite": int(result.metrics["finalizer"]["update_non_finite"]),
        }
        records.append(record)
        print(
            f"tff round {round_}/{rounds} loss {record['tff_train_loss']:.4f} "
            f"examples {record['tff_num_examples']} {record['seconds']:.1f} s",
            flush=True,
        )

    output_dir.mkdir(parents=True, exist_ok=True)
    np.savez(output_dir / "weights.npz", rounds=np.stack(history))
    versions = {"tensorflow_federated": tff.__version__, "tensorflow": tf.__version__}
    versions["numpy"] = np.__version__
    metrics = {"versions": versions, "rounds": records}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print("tff done", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: run_fedavg.py INPUT_DIR OUTPUT_DIR", file=sys.stderr)
        return 2
    try:
        run(Path(argv[1]), Path(argv[2]))
    finally:
        end_children()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
