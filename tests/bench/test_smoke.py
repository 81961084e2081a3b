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
from bench.schemes import FLOAT32, OURS_BFV, OURS_CKKS  # noqa: E402

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
    args = ("--cells", "4:iid", "--patients", "400", "--rounds", "1", "--hidden", "8")
    return run("model_quality", out, *args)


def test_codec_benchmark_compares_every_codec_and_meets_size_and_error_targets(
    codec: Doc,
) -> None:
    (size,) = codec["sizes"]
    figures = size["codecs"]
    assert set(figures) == {OURS_CKKS, OURS_BFV, TENSEAL_FLARE, PYFHEL_PLAIN, FLOAT32}
    ours = figures[OURS_CKKS]
    assert ours["bytes_per_parameter"] <= 16
    assert ours["max_abs_error"]["100"] < 1e-6
    assert figures[FLOAT32]["bytes_per_parameter"] == pytest.approx(4.0, abs=1e-3)
    assert figures[TENSEAL_FLARE]["bytes"] > ours["bytes"]
    for label, f in figures.items():
        # every codec decrypted a correct two-hospital sum
        assert f["pair_error"] < 1e-4, label
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
    assert upload["encrypted (CKKS)"] / model["parameters"] <= 16


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
    assert masked == pytest.approx(unmasked, rel=0.01) and 0 < masked <= 16
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
    # the sum is one update's size (give or take its JSON header), whatever the hospitals
    assert all(abs(c["aggregate_bytes"] - c["upload_bytes"]) < 64 for c in ours)
    assert all(c["speedup_vs_tenseal"] > 0 for c in ours)


def test_quality_benchmark_reports_every_method(quality: Doc) -> None:
    (cell,) = quality["cells"]
    assert set(cell["auc"]) == {"encrypted", "plaintext", "centralized", "local_mean"}
    assert cell["auc_difference"] <= 1e-3
    assert cell["max_abs_weight_difference"] < 1e-3


def test_run_all_writes_the_targets_table_from_the_results(
    out: Path, codec: Doc, rounds: Doc, scaling: Doc, quality: Doc
) -> None:
    assert run_all.main(["--report-only", "--out", str(out)]) == 0
    text = (out / run_all.PERFORMANCE).read_text()
    assert text.startswith(f"# {run_all.HEADING}\n")
    assert "## Targets" in text and "Not measured" not in text
    for needle in ("Upload <= 16 bytes", "3.5x smaller", "1.5x TenSEAL", "1.15x", "1e-6", "0.001"):
        assert needle in text, needle
    for name in run_all.BENCHMARKS:
        assert f"\n## {json.loads((out / f'{name}.json').read_text())['title']}" in text
