"""The benchmarks' quick paths on tiny sizes: each writes its JSON and markdown, figures are sane.

TenSEAL (the anchor) is a benchmark-only dependency in the ``bench`` extra, which ``make test``
installs; without it these tests fail rather than skip. Each benchmark runs in its own process,
as ``bench.run_all`` runs them: TenSEAL's bundled protobuf crashes a process that loaded
TensorFlow first, and this test session has.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

if importlib.util.find_spec("tenseal") is None:
    pytest.fail(
        "TenSEAL is not installed: the benchmarks compare against it. Install the bench extra "
        "(.venv/bin/pip install -e '.[bench]'; `make test` does it).",
        pytrace=False,
    )

from bench import coordinator_scaling, run_all  # noqa: E402
from bench.anchors import PYFHEL_PLAIN, TENSEAL_FLARE  # noqa: E402
from bench.schemes import FLOAT32, OURS_BFV, OURS_CKKS, OURS_CKKS_FULL  # noqa: E402
from common.crypto import HEConfig  # noqa: E402

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


def run(name: str, out: Path, *args: str) -> Doc:
    """Run ``bench.<name>`` in quick mode in a fresh process and load what it wrote."""
    command = [sys.executable, "-m", f"bench.{name}", "--quick", *args]
    done = subprocess.run(
        [*command, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return load(out, name)


def load(out: Path, name: str) -> Doc:
    doc: Doc = json.loads((out / f"{name}.json").read_text())
    assert doc["benchmark"] == name
    assert doc["mode"] == "quick"
    assert doc["command"].startswith(f".venv/bin/python -m bench.{name}")
    machine = doc["machine"]
    assert machine["cpu"] and machine["cores"] >= 1
    for library in ("numpy", "Pyfhel", "tenseal", "tensorflow"):
        assert machine["libraries"][library], library
    markdown = (out / f"{name}.md").read_text()
    assert markdown.startswith("## ") and "| " in markdown and machine["cpu"] in markdown
    return doc


@pytest.fixture(scope="module")
def codec(out: Path) -> Doc:
    return run("he_codec", out, "--sizes", "100000", "--repeats", "1", "--error-values", "4096")


@pytest.fixture(scope="module")
def rounds(out: Path) -> Doc:
    return run("round_overhead", out, "--models", "mlp", "--patients", "300", "--rounds", "2")


@pytest.fixture(scope="module")
def scaling(out: Path) -> Doc:
    return run("coordinator_scaling", out, "--sizes", "8192", "--counts", "2,6")


@pytest.fixture(scope="module")
def quality(out: Path) -> Doc:
    args = ("--cells", "4:iid", "--patients", "400", "--rounds", "3", "--patience", "1")
    args += ("--hidden", "8", "--server-optimizer", "fedavgm", "--server-momentum", "0.5")
    args += ("--ckks-prime-bits", "56")  # 400 patients: the default's error would dominate
    return run("model_quality", out, *args)


def test_codec_benchmark_compares_every_codec_and_meets_size_and_error_targets(
    codec: Doc,
) -> None:
    (size,) = codec["sizes"]
    figures = size["codecs"]
    assert set(figures) == {
        OURS_CKKS,
        OURS_CKKS_FULL,
        OURS_BFV,
        TENSEAL_FLARE,
        PYFHEL_PLAIN,
        FLOAT32,
    }
    ours, before = figures[OURS_CKKS], figures[OURS_CKKS_FULL]
    assert ours["bytes_per_parameter"] <= 5.0  # seeded, 36-bit coefficients: 4.5 per value
    assert 0.3 < ours["bytes"] / before["bytes"] < 0.34  # 4.5 against 14 bytes per value
    assert ours["max_abs_error"]["100"] <= HEConfig().error_bound(100)
    assert before["max_abs_error"]["100"] < 1e-6
    assert figures[FLOAT32]["bytes_per_parameter"] == pytest.approx(4.0, abs=1e-3)
    assert figures[TENSEAL_FLARE]["bytes"] > ours["bytes"]
    for label, f in figures.items():
        # every codec decrypted a correct two-hospital sum
        bound = HEConfig().error_bound(2) if label == OURS_CKKS else 1e-4
        assert f["pair_error"] < bound, label
        for key in ("encrypt_params_per_s", "add_params_per_s", "decrypt_params_per_s"):
            assert f[key] > 0 and math.isfinite(f[key]), (label, key)
    assert size["vs_tenseal"][TENSEAL_FLARE]["encrypt"] == pytest.approx(1.0)
    assert size["vs_tenseal"][OURS_CKKS]["upload_smaller"] > 1


def test_round_benchmark_splits_each_round_into_phases(rounds: Doc) -> None:
    (model,) = rounds["models"]
    assert model["parameters"] == 41_473
    encrypted, plaintext = model["phases"]["encrypted (CKKS)"], model["phases"]["plaintext"]
    for phases in (encrypted, plaintext):
        assert phases["wall"] > 0 and phases["train"] > 0
        parts = sum(v for k, v in phases.items() if k != "wall")
        assert parts == pytest.approx(phases["wall"], rel=1e-6)
    assert encrypted["encrypt"] > 0 and encrypted["decrypt"] > 0
    assert model["ratio"] > 0 and len(model["ratios"]) == 1
    upload = model["bytes_per_hospital"]
    assert upload["encrypted (CKKS)"] / model["parameters"] <= 5.5


@pytest.fixture(scope="module")
def masking(out: Path) -> Doc:
    return run("masking", out, "--hospital-counts", "3", "--rounds", "2", "--repeats", "1")


def test_masking_benchmark_sets_masked_against_unmasked_rounds_of_equal_upload_size(
    masking: Doc,
) -> None:
    (cell,) = masking["cells"]
    assert cell["hospitals"] == 3 and cell["parameters"] == 41_473
    masked, unmasked = (
        cell["bytes_per_parameter"]["masked"],
        cell["bytes_per_parameter"]["unmasked"],
    )
    # masks are added inside the ciphertexts: the upload keeps its size
    assert masked == pytest.approx(unmasked, rel=0.01) and 0 < masked <= 5.5
    for key in ("ratio", "cpu_ratio", "crypto_ratio"):
        assert math.isfinite(cell[key]) and cell[key] > 0, key
    assert cell["mask_words_s"] > 0 and cell["encrypt_s"]["masked"] > 0
    assert cell["attempts"] == [1]  # no dropout: every masked round closed on its first cohort
    (cost,) = masking["mask_cost"]
    assert cost["peers"] == 2 and cost["mask_words"] > 0 and cost["modulus_bits"] >= 20
    for key in ("words", "encrypt", "encrypt_masked"):
        assert cost["seconds"][key] > 0, key
    assert math.isfinite(cost["masked_over_unmasked_encrypt"])


def test_scaling_benchmark_runs_every_cell_in_its_own_process(scaling: Doc) -> None:
    cells = scaling["cells"]
    assert {(c["codec"], c["hospitals"]) for c in cells} == {
        (codec, n) for codec in coordinator_scaling.CODECS for n in (2, 6)
    }
    for c in cells:
        assert c["seconds"] > 0 and c["peak_rss_mb"] >= c["rss_before_mb"] > 0
    ours = [c for c in cells if c["codec"] == coordinator_scaling.OURS]
    # the sum is a full ciphertext, less than two seeded updates, whatever the hospitals
    assert all(c["upload_bytes"] < c["aggregate_bytes"] < 2 * c["upload_bytes"] for c in ours)
    sizes = [c["aggregate_bytes"] for c in ours]
    assert max(sizes) - min(sizes) < 64  # give or take its JSON header
    assert all(c["speedup_vs_tenseal"] > 0 for c in ours)


def test_quality_benchmark_reports_every_method_the_target_and_the_rounds_needed(
    quality: Doc,
) -> None:
    (cell,) = quality["cells"]
    auc = cell["auc"]
    assert set(auc) == {
        "encrypted",
        "plaintext",
        "centralized",
        "logistic",
        "boosting",
        "local_mean",
    }
    assert all(0 < value < 1 for value in auc.values()), auc
    assert cell["auc_difference"] <= 1e-3
    assert cell["max_abs_weight_difference"] < 1e-3
    # The verdict follows from the figures: within 0.01 of the MLP and at least the LR.
    expected = auc["encrypted"] >= auc["centralized"] - 0.01 and auc["encrypted"] >= auc["logistic"]
    assert cell["meets_target"] is expected
    assert quality["targets_met"] == int(expected)
    # The flags reached the run: the server optimizer, and early stopping's rounds.
    server = quality["config"]["model"]["server_optimizer"]
    assert server["name"] == "fedavgm" and server["momentum"] == 0.5
    assert cell["max_rounds"] == 3 and 1 <= cell["final_round"] <= cell["rounds_run"] <= 3
    assert cell["stopped"] in ("max-rounds", "early-stopping")
    if cell["stopped"] == "early-stopping":
        assert cell["rounds_run"] == cell["final_round"] + 1  # patience 1


@pytest.fixture(scope="module")
def precision(out: Path) -> Doc:
    args = ("--primes", "40,36", "--cells", "3", "--patients", "600", "--rounds", "1")
    return run("precision", out, *args)


def test_precision_benchmark_tables_bytes_error_and_auc_per_prime(precision: Doc) -> None:
    codecs = {c["prime_bits"]: c for c in precision["codecs"]}
    assert sorted(codecs) == [36, 40]
    for bits, c in codecs.items():
        assert c["scale_bits"] == bits - 16 and c["value_bound"] == pytest.approx(81.92)
        assert 0 < c["error_after_sums"] <= c["stated_bound"]
        per_value = (4096 * bits / 8 + 65) / 4096  # a seeded chunk
        assert per_value < c["sizes"]["1000000"]["bytes_per_parameter"] < per_value + 0.1
    assert codecs[36]["error_after_sums"] > codecs[40]["error_after_sums"]
    (cell,) = precision["cells"]
    assert cell["hospitals"] == 3 and set(cell["encrypted"]) == {"40", "36"}
    assert 0 < cell["plaintext_auc"] < 1
    for figures in cell["encrypted"].values():
        assert figures["difference"] == pytest.approx(abs(figures["auc"] - cell["plaintext_auc"]))
    assert precision["recommended_prime_bits"] in (36, 40, None)


def test_run_all_writes_the_targets_table_from_the_results(
    out: Path, codec: Doc, rounds: Doc, scaling: Doc, quality: Doc, precision: Doc
) -> None:
    assert run_all.main(["--report-only", "--out", str(out)]) == 0
    text = (out / run_all.PERFORMANCE).read_text()
    assert text.startswith(f"# {run_all.HEADING}\n")
    assert "## Targets" in text and "Not measured" not in text
    needles = ("Upload <= 5.0 bytes", "11x smaller", "1.5x TenSEAL", "previous default", "1.15x")
    for needle in (*needles, "stated bound", "0.0005", "smallest within"):
        assert needle in text, needle
    for name in run_all.BENCHMARKS:
        assert f"\n## {json.loads((out / f'{name}.json').read_text())['title']}" in text
