"""The ``hefl`` command line: one parser built from the flag table, one handler per subcommand.

Flags are parsed and validated here, once (``hefl.cli.flags`` owns every flag and its
environment variable; ``hefl.cli.commands`` the subcommands). Errors of this project become one
``error: ...`` line and the error's exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import HeflError
from common.logs import configure
from hefl.cli.commands import COMMANDS, Command
from hefl.cli.flags import FLAGS
from hefl.cli.parser import add_flag, reference_table

__all__ = ["COMMANDS", "FLAGS", "build_parser", "flag_reference", "main"]


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """The whole parser; flag defaults read ``environ`` (the process environment)."""
    parser = argparse.ArgumentParser(
        prog="hefl",
        description="Federated learning for hospitals with encrypted model updates.",
        allow_abbrev=False,
    )
    add_flag(parser, "log_level", environ=environ)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _add_command(sub, command, environ)
    return parser


def _add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    command: Command[Any],
    environ: Mapping[str, str],
) -> None:
    parser = sub.add_parser(
        command.name, help=command.help, description=command.help, allow_abbrev=False
    )
    for item in dataclasses.fields(command.options):
        add_flag(
            parser,
            item.name,
            default=command.defaults.get(item.name),
            required=item.name in command.required,
            environ=environ,
        )
    parser.set_defaults(_command=command)


def flag_reference() -> str:
    """The markdown table of every flag (``docs/configuration.md``)."""
    used = {
        c.name: {item.name: c.defaults.get(item.name) for item in dataclasses.fields(c.options)}
        for c in COMMANDS
    }
    return reference_table(used)


def _options(command: Command[Any], args: argparse.Namespace) -> Any:
    values = {item.name: getattr(args, item.name) for item in dataclasses.fields(command.options)}
    return command.options(**values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    command: Command[Any] = args._command
    try:
        return command.run(_options(command, args))
    except HeflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
