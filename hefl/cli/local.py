"""Handlers of the commands that run on one machine: ``simulate``, ``partition``, ``keygen``,
``predict`` and the helpers ``broker-users`` and ``drive-share``."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from common.errors import ConfigError
from common.progress import Bar, Progress, TerminalProgress, is_terminal
from hefl.cli.keys import he_config
from hefl.cli.options import (
    BrokerUsersOptions,
    DriveShareOptions,
    KeygenOptions,
    PartitionOptions,
    PredictOptions,
    SimulateOptions,
)

if TYPE_CHECKING:
    from hefl.simulation import SimulationConfig


def simulate(options: SimulateOptions) -> int:
    from common.fedavg import MIN_CONTRIBUTORS
    from hefl.simulation import SimulationConfig

    options.check()
    if options.hospitals < MIN_CONTRIBUTORS:
        raise ConfigError(
            f"--hospitals {options.hospitals}: a federated run needs at least "
            f"{MIN_CONTRIBUTORS} hospitals (with 2, each would learn the other's update)"
        )
    if options.min_hospitals is not None and options.min_hospitals > options.hospitals:
        raise ConfigError(
            f"--min-hospitals {options.min_hospitals} > --hospitals {options.hospitals}"
        )
    if options.max_hospitals < options.hospitals:
        raise ConfigError(
            f"--max-hospitals {options.max_hospitals} < --hospitals {options.hospitals}: "
            "the encrypted sum must have room for every hospital"
        )
    config = SimulationConfig(
        dataset=options.dataset,
        schema=options.schema,
        hospitals=options.hospitals,
        partition=options.partition,  # type: ignore[arg-type]  # argparse checked the choice
        alpha=options.alpha,
        column=options.column,
        rounds=options.rounds,
        seed=options.seed,
        test_fraction=options.test_fraction,
        min_hospitals=options.min_hospitals,
        model=options.model(),
        he=he_config(options.scheme, options.max_hospitals, options.ckks_prime_bits),
        out=options.out,
        store=options.store,
        masking=not options.no_masking,
        top_fraction=options.top_fraction,
        patience=options.patience,
        min_delta=options.min_delta,
    )
    if options.engine == "tff":
        from hefl.tff import run_tff_engine

        run_tff_engine(config, emit=_printer())  # its rounds are printed after the run: no bar
    elif is_terminal(sys.stdout) and is_terminal(sys.stderr):
        _compare_with_bars(config, baselines=not options.no_baselines)
    else:
        from hefl.compare import run_comparison

        run_comparison(config, emit=_printer(), baselines=not options.no_baselines)
    if options.engine == "hefl":
        from hefl.cli.report import report_after_run

        report_after_run(config.out, _printer())
    return 0


def _compare_with_bars(config: SimulationConfig, *, baselines: bool) -> None:
    """The comparison on a terminal: bars of rounds and local epochs on stderr, the other lines
    on stdout above them. Training is the same as without bars."""
    from hefl.compare import run_comparison
    from hospital_node.progress import EpochBar
    from hospital_node.trainer import keras_trainer_with

    progress = TerminalProgress(sys.stderr)
    rounds, epochs = RoundBars(progress, rounds=config.rounds), EpochBar(progress)
    try:
        with progress.logs_above_bars():
            run_comparison(
                config,
                emit=rounds,
                baselines=baselines,
                trainer_for=keras_trainer_with(on_epoch=epochs),
            )
    finally:
        epochs.close()
        rounds.close()


def partition(options: PartitionOptions) -> int:
    """Split once: the same split again keeps the files, another one needs --overwrite."""
    from common.data import load_schema, write_partitions
    from common.data.partition import MANIFEST_NAME

    options.check()
    schema = load_schema(options.schema)
    manifest = options.out / MANIFEST_NAME
    if manifest.is_file() and not options.overwrite:
        _check_same_split(manifest, options, schema.name)
        print(f"kept the partition in {options.out} ({MANIFEST_NAME} describes this split)")
        return 0
    options.out.mkdir(parents=True, exist_ok=True)
    # Readers may already watch --out (hospital pods): each file appears whole, the manifest last.
    staging = Path(tempfile.mkdtemp(prefix=".partition-", dir=options.out))
    try:
        paths = write_partitions(
            options.dataset,
            schema,
            staging,
            options.hospitals,
            method=options.partition,  # type: ignore[arg-type]
            alpha=options.alpha,
            column=options.column,
            seed=options.seed,
        )
        manifest.unlink(missing_ok=True)
        for path in [*paths, staging / MANIFEST_NAME]:
            os.replace(path, options.out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path in paths:
        print(options.out / path.name)
    return 0


def _check_same_split(manifest: Path, options: PartitionOptions, schema: str) -> None:
    try:
        found = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{manifest}: unreadable ({exc}); --overwrite replaces it") from exc
    dirichlet, by_column = options.partition == "dirichlet", options.partition == "column"
    wanted = {
        "source": options.dataset.name,
        "schema": schema,
        "method": options.partition,
        "seed": options.seed,
        "n_hospitals": options.hospitals,
        "alpha": options.alpha if dirichlet else None,
        "column": options.column if by_column else None,
    }
    differs = [f"{k} {found.get(k)!r} (now {v!r})" for k, v in wanted.items() if found.get(k) != v]
    if differs:
        raise ConfigError(
            f"{options.out} holds another split: {', '.join(differs)}; --overwrite replaces it"
        )


def keygen(options: KeygenOptions) -> int:
    from common.protocol.runconfig import hospital_names
    from hefl.keylayout import key_ceremony

    layout = key_ceremony(
        options.keys,
        he_config(options.scheme, options.max_hospitals, options.ckks_prime_bits),
        list(hospital_names(options.hospitals)),
        overwrite=options.overwrite,
    )
    print(f"hospitals' HE bundle (secret key; hospitals only): {layout.he_hospital}")
    print(f"coordinator's HE bundle (public material only): {layout.he_coordinator}")
    print(f"signing identities and trust.json: {layout.identities}")
    return 0


def predict(options: PredictOptions) -> int:
    """Score a CSV with a model bundle: the scores to ``--out`` or standard output, one summary
    line to standard error."""
    from hefl.predict import score_csv, terminal_progress, write_scores

    scores = score_csv(options.model, options.csv, progress=terminal_progress(sys.stderr))
    write_scores(scores, options.out, sys.stdout)
    print(scores.summary(options.csv, options.out), file=sys.stderr, flush=True)
    return 0


def _printer() -> Callable[[str], None]:
    def emit(line: str) -> None:
        print(line, flush=True)

    return emit


#: A round's line, as ``hefl.reporting.progress_line`` writes it: round, rounds, AUC, loss.
ROUND_LINE: Final = re.compile(r"\s*round\s+(\d+)/(\d+)\s.*?\bauc (\S+)\s+loss (\S+)")


class RoundBars:
    """The comparison's output on a terminal (an ``emit``): each federated run's round lines
    become a rounds bar with the round's AUC and loss beside it; other lines print on stdout.

    A run's heading (the line ending in ``:`` that the comparison prints before it) opens the
    bar, so that its clock starts with the first round; a line that is not a round line, or a
    changed line format, prints as it is.
    """

    def __init__(self, progress: Progress, *, rounds: int) -> None:
        self._progress = progress
        self._rounds = rounds
        self._bar: Bar | None = None

    def __call__(self, line: str) -> None:
        found = ROUND_LINE.match(line)
        if found is None:
            self._progress.write(line, sys.stdout)
            if line.endswith(":"):
                self.close()
                self._bar = self._progress.bar("round", self._rounds)
            return
        round_, rounds = int(found[1]), int(found[2])
        if self._bar is None:
            self._bar = self._progress.bar("round", rounds)
        self._bar.update(round_, {"auc": float(found[3]), "loss": float(found[4])})
        if round_ >= rounds:
            self.close()

    def close(self) -> None:
        """Leave the open bar on screen as it stands."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def drive_share(options: DriveShareOptions) -> int:
    from common.store import open_store
    from common.store.gdrive import DriveStore
    from common.store.gdrive_share import share_run_folders, site_store_url

    accounts = dict(pair.partition("=")[::2] for pair in options.accounts)
    if any(not site or not email for site, email in accounts.items()) or len(accounts) != len(
        options.accounts
    ):
        raise ConfigError(f"--accounts is SITE=ACCOUNT,... with each site once: {options.accounts}")
    store = open_store(options.store)
    if not isinstance(store, DriveStore):
        raise ConfigError(f"drive-share needs a gdrive:// store, got {options.store!r}")
    folders = share_run_folders(store, options.run, accounts)
    for site in sorted(accounts):
        print(f"{site}: {site_store_url(store.root_id, folders.for_hospital(site))}")
    return 0


def broker_users(options: BrokerUsersOptions) -> int:
    from common.atomic import write_atomic
    from common.protocol.runconfig import hospital_names
    from common.transport.settings import read_password_file
    from hefl.sites.broker import ADMIN, definitions, issue_passwords, participants

    hospitals = hospital_names(options.hospitals)
    folder = options.out / "passwords"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(
        folder, 0o700
    )  # the passwords: the operator's; the definitions hold salted hashes only
    names = (*participants(hospitals), ADMIN)
    known = {n: read_password_file(folder / n) for n in names if (folder / n).is_file()}
    passwords = issue_passwords(names, known)
    for name in names:
        if name not in known:
            write_atomic(folder / name, (passwords[name] + "\n").encode(), mode=0o600)
    admin = passwords.pop(ADMIN)
    rendered = definitions(hospitals, passwords, admin)
    body = (json.dumps(rendered, indent=1, sort_keys=True) + "\n").encode()
    definitions_file = options.out / "definitions.json"
    write_atomic(definitions_file, body, mode=0o644)  # rabbitmqctl reads it as the broker's user
    kept = len(known)
    print(
        f"{len(names)} broker users in {options.out} ({kept} kept, {len(names) - kept} new): "
        f"import them with\n  rabbitmqctl import_definitions {definitions_file.resolve()}\n"
        f"then give each participant --broker amqp://HOST:5672/{rendered['vhosts'][0]['name']} "
        f"and --broker-password-file {folder} (or only its own file)"
    )
    return 0
