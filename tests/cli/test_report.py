"""``hefl report``: one HTML file with every plot, from a real small ``hefl simulate`` run.

The run (3 hospitals, 2 rounds, a sample of Diabetes-130; real Keras, real Pyfhel) writes
``summary.json``, ``scores.npz`` and the report; Chromium opens the report headless.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.metrics import compute_metrics
from hefl.cli import build_parser, main
from hefl.holdout import SCORES_FILE, read_scores
from hefl.report import REPORT_FILE, load_run, write_report
from hefl.report.curves import hospital_aucs, reliability
from hefl.reporting import CENTRALIZED, SUMMARY_FILE, alone
from testkit.browser import read_png, screenshot
from testkit.cluster import sample_csv

ROOT = Path(__file__).resolve().parents[2]
HOSPITALS = ("hospital-1", "hospital-2", "hospital-3")
#: What each <img> must name, in page order.
PLOTS = (
    "AUC per round",
    "loss per round",
    "ROC curves",
    "Precision-recall curves",
    "Calibration",
    "AUC on each hospital's own test patients",
    "Data per hospital",
)
#: matplotlib's first line colour (C0): only a drawn plot puts it on the page.
PLOT_BLUE = np.array([31, 119, 180])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``hefl simulate`` on 1,500 patients, IID (every hospital holds both classes): its
    folder and what it printed."""
    root = tmp_path_factory.mktemp("report")
    data = sample_csv(root / "sample.csv", patients=1500, seed=7)
    out = root / "run"
    argv = ["simulate", "--dataset", str(data), "--hospitals", "3", "--rounds", "2"]
    argv += ["--hidden", "8", "--local-epochs", "1", "--partition", "iid", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return out, printed.getvalue()


class Images(HTMLParser):
    """The <img> tags of a page and any reference to something outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values)
        for key in ("src", "href"):
            if key in values and not values[key].startswith("data:"):
                self.external.append(f"{tag} {key}={values[key][:80]}")
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)


def images_of(path: Path) -> Images:
    parser = Images()
    parser.feed(path.read_text())
    return parser


def test_simulate_writes_the_report_and_prints_its_path(run: tuple[Path, str]) -> None:
    out, printed = run
    assert f"wrote report: {out / REPORT_FILE}" in printed.splitlines()
    assert (out / REPORT_FILE).stat().st_size > 10_000


def test_the_scores_file_reproduces_every_scored_row_of_the_summary(
    run: tuple[Path, str],
) -> None:
    out, _ = run
    summary = json.loads((out / SUMMARY_FILE).read_text())
    holdout = read_scores(out / SCORES_FILE)
    scored = [r for r in summary["results"] if r["clinical"] is not None]
    assert holdout.methods == tuple(r["method"] for r in scored)
    for row in scored:
        auc = compute_metrics(holdout.labels, holdout.of(row["method"])).auc
        assert auc == pytest.approx(row["auc"], abs=1e-6), row["method"]
    assert int(holdout.labels.sum()) == scored[0]["clinical"]["positives"]
    per_hospital = summary["data"]["per_hospital"]
    assert holdout.hospitals == HOSPITALS == tuple(per_hospital)
    assert holdout.test_rows == tuple(d["test_rows"] for d in per_hospital.values())
    for name, rows in holdout.slices().items():
        rate = float(np.mean(holdout.labels[rows]))
        assert rate == pytest.approx(per_hospital[name]["test_positive_rate"])
    assert summary["data"]["pooled_test"]["rows"] == holdout.labels.size


def test_per_hospital_aucs_from_the_scores_match_what_each_hospital_reported(
    run: tuple[Path, str],
) -> None:
    """The pooled hold-out cut back into hospitals gives the final model's AUC each hospital
    computed on its own test split: the slices are the right rows."""
    out, _ = run
    record = load_run(out)
    assert record.scores is not None
    encrypted = record.scores.methods[0]
    computed = hospital_aucs(record.scores, [encrypted])[encrypted]
    reported = record.final_by_hospital[encrypted]
    assert sorted(reported) == list(HOSPITALS)
    for name in HOSPITALS:
        assert computed[name] == pytest.approx(reported[name], abs=1e-6), name
    assert {alone(h) for h in HOSPITALS} | {CENTRALIZED} <= set(record.scores.methods)


def test_the_report_embeds_every_plot_with_an_alt_text_and_needs_nothing_else(
    run: tuple[Path, str],
) -> None:
    out, _ = run
    page = images_of(out / REPORT_FILE)
    assert page.external == []
    alts = [image["alt"] for image in page.images]
    assert len(alts) == len(PLOTS), alts
    for alt, plot in zip(alts, PLOTS, strict=True):
        assert plot in alt, (plot, alt)
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        png = Image.open(io.BytesIO(base64.b64decode(image["src"][len(prefix) :])))
        assert png.format == "PNG" and png.width >= 600 and png.height >= 400
    text = (out / REPORT_FILE).read_text()
    for method in (*(alone(h) for h in HOSPITALS), CENTRALIZED, "encrypted FedAvg (CKKS)"):
        assert f"<td>{method}</td>" in text, method


def test_chromium_shows_the_report_with_its_plots(run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run
    png_path = screenshot((out / REPORT_FILE).as_uri(), tmp_path / "report.png", height=6000)
    png = read_png(png_path)
    assert (png.width, png.height) == (1280, 6000)
    pixels = np.asarray(Image.open(png_path).convert("RGB"), dtype=np.int64)
    assert pixels.std() > 20, "the screenshot is blank"
    blue = np.all(np.abs(pixels - PLOT_BLUE) <= 8, axis=-1)
    rows_with_blue = np.flatnonzero(blue.any(axis=1))
    assert blue.sum() > 5000, "no plot was drawn"
    assert rows_with_blue.max() - rows_with_blue.min() > 3000, "the plots stop early"


def test_the_report_command_writes_where_asked(run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = run
    target = tmp_path / "elsewhere" / "mine.html"
    assert main(["report", str(out), "--out", str(target)]) == 0
    assert len(images_of(target).images) == len(PLOTS)


def test_a_run_without_scores_still_reports_and_says_what_is_missing(
    run: tuple[Path, str], tmp_path: Path
) -> None:
    """An older run (or --engine tff): no scores.npz and no data summary."""
    out, _ = run
    folder = tmp_path / "old"
    folder.mkdir()
    summary = json.loads((out / SUMMARY_FILE).read_text())
    del summary["data"]
    (folder / SUMMARY_FILE).write_text(json.dumps(summary))
    target = write_report(folder)
    alts = [image["alt"] for image in images_of(target).images]
    assert len(alts) == 2 and "AUC per round" in alts[0] and "loss per round" in alts[1]
    text = target.read_text()
    assert f"{folder / SCORES_FILE} is missing" in text
    assert "no per-hospital data summary" in text


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("fedyogi", ["encrypted FedYogi (BFV)", "plaintext FedYogi", "TFF FedYogi (plaintext)"]),
        ("fedavgm", ["encrypted FedAvgM (BFV)", "plaintext FedAvgM", "TFF FedAvgM (plaintext)"]),
        (None, ["encrypted FedAvg (BFV)", "plaintext FedAvg", "TFF FedAvg (plaintext)"]),
    ],
)
def test_the_per_round_series_are_named_by_the_runs_server_optimizer(
    tmp_path: Path, server: str | None, expected: list[str]
) -> None:
    """Named as the results table names the rows; plain FedAvg (or a run from before server
    optimizers) has no ``server_optimizer`` in its configuration."""
    model = {} if server is None else {"server_optimizer": {"name": server}}
    rounds = [{"round": 1, "holdout_metrics_mean": {"auc": 0.6, "loss": 0.4}}]
    summary = {
        "config": {"he": {"scheme": "bfv"}, "model": model},
        "results": [{"method": expected[0], "auc": 0.6}],
        "runs": {run: {"rounds": rounds} for run in ("encrypted", "plaintext", "tff")},
    }
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summary))
    assert list(load_run(tmp_path).rounds) == expected


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "not found"),
        ("{not json", "is not a readable JSON summary"),
        ("[1, 2]", "expected a JSON object"),
        ('{"runs": {}}', "'results' must be a non-empty list"),
        ('{"results": [{"auc": 0.5}]}', "results[0] has no 'method'"),
        ('{"results": [{"method": "m", "auc": "high"}]}', "results[0] 'auc' is not a number"),
        ('{"results": [{"method": "m", "auc": 0.5}], "runs": {"e": {"rounds": 3}}}', "rounds"),
    ],
)
def test_a_missing_or_malformed_summary_is_a_clear_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, needle: str
) -> None:
    if content is not None:
        (tmp_path / SUMMARY_FILE).write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / SUMMARY_FILE}"), error
    assert needle in error
    assert not (tmp_path / REPORT_FILE).exists()


def test_a_malformed_scores_file_is_a_clear_error_naming_it(
    run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = run
    shutil.copy(out / SUMMARY_FILE, tmp_path / SUMMARY_FILE)
    holdout = read_scores(out / SCORES_FILE)
    np.savez(
        tmp_path / SCORES_FILE,
        labels=holdout.labels,
        methods=np.asarray(holdout.methods),
        scores=holdout.scores,
        hospitals=np.asarray(holdout.hospitals),
        test_rows=np.asarray([1, 2, 3]),  # not the hold-out's rows
    )
    assert main(["report", str(tmp_path)]) == 2
    assert f"error: {tmp_path / SCORES_FILE}: test_rows [1, 2, 3]" in capsys.readouterr().err
    (tmp_path / SCORES_FILE).write_bytes(b"not a zip")
    assert main(["report", str(tmp_path)]) == 2
    assert f"error: {tmp_path / SCORES_FILE}: cannot read" in capsys.readouterr().err


def test_a_folder_that_does_not_exist_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err


def test_without_matplotlib_the_report_names_the_extra_and_simulate_still_succeeds(
    run: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = run
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"  # what an install without it sees
        "from pathlib import Path\n"
        "from hefl.cli import main\n"
        "from hefl.cli.report import report_after_run\n"
        f"report_after_run(Path({str(out)!r}), print)\n"
        f"sys.exit(main(['report', {str(out)!r}, '--out', {str(tmp_path / 'r.html')!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "error: hefl report needs matplotlib: pip install -e '.[report]'" in done.stderr
    assert done.stdout.startswith("no report: hefl report needs matplotlib"), done.stdout
    assert f"then hefl report {out}" in done.stdout
    assert not (tmp_path / "r.html").exists()


def test_run_dir_is_a_positional_argument_or_its_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser({}).parse_args(["report"])
    assert exit_.value.code == 2
    assert "RUN_DIR" in capsys.readouterr().err
    args = build_parser({}).parse_args(["report", "out/x"])
    assert (args.run_dir, args.out) == (Path("out/x"), None)
    args = build_parser({"HEFL_RUN_DIR": "out/y"}).parse_args(["report"])
    assert args.run_dir == Path("out/y")


def test_the_reliability_diagram_groups_by_deciles_of_predicted_risk() -> None:
    scores = np.arange(100) / 100
    labels = (np.arange(100) >= 90).astype(np.int64)  # the top decile readmitted
    curve = reliability("m", labels, scores)
    assert curve.x == pytest.approx([0.045 + 0.1 * k for k in range(10)])
    assert curve.y.tolist() == [0.0] * 9 + [1.0]
    assert reliability("m", labels[:4], scores[:4]).x.size == 4  # fewer rows than bins
