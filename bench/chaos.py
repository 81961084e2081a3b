"""Chaos soak: a BFV federation under many faults at once, against the same run without any.

Real ``hefl coordinator`` and ``hefl hospital`` processes on a three-node RabbitMQ cluster with
quorum queues (``testkit.soak``) train a small MLP (32 hidden units; 10 local epochs, 3 with
``--quick``) on a fixed Diabetes-130 sample. A seeded scheduler (``testkit.chaos``) SIGKILLs
hospitals, the coordinator and broker nodes, freezes processes (SIGSTOP, SIGCONT), fails the store
(the fake Google Drive answers bursts of 503 and drops connections; the local store's tmpfs fills
up), each timed to a moment of a round (training, upload, aggregation, state write), and restarts
or clears it after a hold. Each seed's store cycles through ``--stores``. The fault-free run is the
reference: with BFV the final models must agree to 1e-6 and every round must keep every hospital.

    .venv/bin/python -m bench.chaos [--quick] [--seeds 1,2,3] [--hospitals 8] [--rounds 20]

Writes bench/results/chaos.{json,md} (``--quick``: 4 hospitals, 10 rounds, one seed). Needs
root (the tmpfs, the broker nodes run as the rabbitmq user) and Debian's rabbitmq-server.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import report
from testkit.broker_cluster import BrokerCluster, broker_cluster
from testkit.chaos import KINDS, plan_faults
from testkit.soak import SoakConfig, SoakResult, run_soak

NAME = "chaos"
TITLE = "Chaos soak: BFV rounds under seeded faults against the fault-free run"
TOLERANCE = 1e-6
STORE_KINDS = {"local": ("store-full",), "drive": ("store-5xx", "store-drop")}
PROCESS_KINDS = ("kill-hospital", "kill-coordinator", "kill-broker-node", "pause")


@dataclass(frozen=True)
class Plan:
    seeds: tuple[int, ...]
    hospitals: int
    rounds: int
    faults: int
    stores: tuple[str, ...]
    patients: int
    gap: tuple[float, float]
    hold_scale: float
    local_epochs: int


FULL = Plan((1, 2, 3), 8, 20, 12, ("local", "drive"), 4000, (0.5, 3.0), 1.0, 10)
QUICK = Plan((1,), 4, 10, 5, ("local",), 3000, (0.3, 1.5), 0.5, 3)


def soak(plan: Plan, root: Path, log: Any = print) -> dict[str, Any]:
    """The fault-free reference, then one chaos run per seed; the figures."""
    names = tuple(f"hospital-{i}" for i in range(1, plan.hospitals + 1))
    base = SoakConfig(
        root=root / "reference",
        hospitals=plan.hospitals,
        rounds=plan.rounds,
        patients=plan.patients,
        local_epochs=plan.local_epochs,
    )
    runs = []
    with broker_cluster() as brokers:
        log(f"fault-free reference: {plan.hospitals} hospitals, {plan.rounds} rounds")
        reference = run_soak(base, brokers)
        log(f"  {reference.seconds:.0f} s")
        for index, seed in enumerate(plan.seeds):
            store = plan.stores[index % len(plan.stores)]
            faults = plan_faults(
                seed,
                count=plan.faults,
                kinds=PROCESS_KINDS + STORE_KINDS[store],
                hospitals=names,
                broker_nodes=len(brokers.nodes),
                gap=plan.gap,
                hold_scale=plan.hold_scale,
            )
            log(f"seed {seed} ({store} store): {len(faults)} faults planned")
            _all_nodes_up(brokers)
            config = replace(base, root=root / f"seed-{seed}", store=store, faults=tuple(faults))
            try:
                result = run_soak(config, brokers)
            except AssertionError as exc:  # the run failed or stalled: a finding, not a crash
                runs.append({"seed": seed, "store": store, "error": str(exc)[:4000]})
                log(f"  FAILED: {str(exc)[:300]}")
                continue
            runs.append(_run_figures(seed, result, reference))
            log(f"  {result.seconds:.0f} s, max |difference| {runs[-1]['max_difference']:.3g}")
    return {
        "config": {
            "hospitals": plan.hospitals,
            "rounds": plan.rounds,
            "seeds": list(plan.seeds),
            "faults_per_seed": plan.faults,
            "stores": list(plan.stores),
            "scheme": "bfv",
            "patients": plan.patients,
            "broker_nodes": 3,
            "tolerance": TOLERANCE,
            "local_epochs": plan.local_epochs,
        },
        "reference_seconds": round(reference.seconds, 1),
        "runs": runs,
        "kinds": by_kind(runs),
    }


def _all_nodes_up(brokers: BrokerCluster) -> None:
    for node in brokers.nodes:
        if not node.running:
            brokers.start_node(node)


def _run_figures(seed: int, result: SoakResult, reference: SoakResult) -> dict[str, Any]:
    everyone = sorted(result.weights)
    return {
        "seed": seed,
        "store": result.config.store,
        "seconds": round(result.seconds, 1),
        "rounds": len(result.accepted),
        "rounds_with_everyone": sum(accepted == everyone for accepted in result.accepted),
        "reference_rounds": len(reference.accepted),
        "max_difference": result.max_difference(reference),
        "unplanned_restarts": result.unplanned_restarts,
        "faults": [outcome.to_json() for outcome in result.outcomes],
    }


def by_kind(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind of fault over every run: injected, recovered, median and worst recovery time."""
    table: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        faults = [f for run in runs for f in run.get("faults", ()) if f["kind"] == kind]
        if not faults:
            continue
        times = [f["time_to_recover"] for f in faults if f["time_to_recover"] is not None]
        table[kind] = {
            "injected": len(faults),
            "recovered": len(times),
            "median_seconds": report.median(times),
            "max_seconds": max(times) if times else None,
            "moments": sorted({f["landed"] for f in faults}),
        }
    return table


def passed(figures: dict[str, Any]) -> list[str]:
    """What went wrong, run by run (empty: the soak passed)."""
    problems = []
    for run in figures["runs"]:
        tag = f"seed {run['seed']} ({run['store']})"
        if "error" in run:
            problems.append(f"{tag}: {run['error'].splitlines()[0]}")
            continue
        if run["max_difference"] > TOLERANCE:
            problems.append(f"{tag}: final model differs by {run['max_difference']:.3g}")
        if not run["rounds"] == run["rounds_with_everyone"] == run["reference_rounds"]:
            problems.append(
                f"{tag}: {run['rounds_with_everyone']} of {run['rounds']} rounds kept every "
                f"hospital (reference: {run['reference_rounds']} rounds)"
            )
        lost = [f for f in run["faults"] if f["recovered"] is None]
        if lost:
            problems.append(f"{tag}: {len(lost)} faults never recovered: {lost}")
    return problems


def markdown(figures: dict[str, Any]) -> str:
    config = figures["config"]
    runs = [
        [
            run["seed"],
            run["store"],
            len(run["faults"]),
            f"{run['seconds']:.0f}",
            f"{run['rounds_with_everyone']}/{run['rounds']}",
            f"{run['max_difference']:.3g}",
            sum(run["unplanned_restarts"].values()),
        ]
        for run in figures["runs"]
        if "error" not in run
    ]
    kinds = [
        [
            kind,
            row["injected"],
            row["recovered"],
            report.fmt(row["median_seconds"], ".1f"),
            report.fmt(row["max_seconds"], ".1f"),
            ", ".join(row["moments"]),
        ]
        for kind, row in figures["kinds"].items()
    ]
    problems = passed(figures)
    verdict = "PASS" if not problems else "FAIL: " + "; ".join(problems)
    return "\n\n".join(
        [
            f"{config['hospitals']} hospitals, {config['rounds']} rounds, BFV, 3 broker nodes "
            f"with quorum queues; the fault-free reference took {figures['reference_seconds']:.0f}"
            f" s. Verdict (final model within {TOLERANCE:g} of the reference, every round with "
            f"every hospital, every fault recovered): **{verdict}**.",
            report.md_table(
                [
                    "seed",
                    "store",
                    "faults",
                    "seconds",
                    "rounds with everyone",
                    "max abs difference",
                    "unplanned restarts",
                ],
                runs,
            ),
            "Per kind of fault (time to recover: from injection to the next round closed "
            "with every hospital, or the run's end):",
            report.md_table(
                ["fault", "injected", "recovered", "median s", "worst s", "moments"], kinds
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_ints, default=None, help="e.g. 1,2,3")
    parser.add_argument("--hospitals", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--faults", type=int, default=None, help="faults per seed")
    parser.add_argument("--stores", type=_stores, default=None, help="local,drive")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folders and logs")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = replace(
        plan,
        seeds=args.seeds or plan.seeds,
        hospitals=args.hospitals or plan.hospitals,
        rounds=args.rounds or plan.rounds,
        faults=args.faults or plan.faults,
        stores=args.stores or plan.stores,
    )
    root = Path(tempfile.mkdtemp(prefix="hefl-chaos-"))
    started = time.monotonic()
    try:
        figures = soak(plan, root, log=lambda line: print(line, flush=True))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"runs kept in {root}")
    figures["seconds"] = round(time.monotonic() - started, 1)
    status = report.publish(
        NAME,
        out=args.out,
        mode=report.QUICK if args.quick else report.FULL,
        title=TITLE,
        figures=figures,
        markdown=markdown(figures),
        argv=argv,
    )
    return status if not passed(figures) else 1


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _stores(text: str) -> tuple[str, ...]:
    stores = tuple(text.split(","))
    unknown = sorted(set(stores) - set(STORE_KINDS))
    if unknown:
        raise ValueError(f"unknown stores {unknown}: local, drive")
    return stores


if __name__ == "__main__":
    sys.exit(main())
