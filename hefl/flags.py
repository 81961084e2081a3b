"""Flag types and flag groups shared by the ``hefl`` subcommands."""

from __future__ import annotations

import argparse

from common.model import ModelConfig


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def units(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Model and local-training flags; their defaults are ``ModelConfig``'s."""
    model = ModelConfig()
    parser.add_argument(
        "--hidden",
        type=units,
        default=model.hidden_units,
        help="hidden layer sizes, e.g. 128,64 (default: 128)",
    )
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=model.optimizer)
    parser.add_argument("--learning-rate", type=float, default=model.learning_rate)
    parser.add_argument("--batch-size", type=positive_int, default=model.batch_size)
    parser.add_argument(
        "--local-epochs",
        type=positive_int,
        default=model.local_epochs,
        help="local epochs per round (default: %(default)s)",
    )


def model_from_args(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        hidden_units=args.hidden,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        local_epochs=args.local_epochs,
    )
