"""From the flag table to argparse: environment variables as defaults, and the reference table.

Precedence: a flag on the command line, else its environment variable, else the default. An
environment variable set to the empty string counts as unset; one that does not parse is a usage
error naming the variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from hefl.cli.flags import FLAGS, Flag

_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


def _from_environment(flag: Flag, environ: Mapping[str, str]) -> Any:
    text = environ.get(flag.variable, "")
    if text == "":
        return None
    if flag.switch:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise argparse.ArgumentTypeError(f"{flag.variable}={text!r}: expected 1/0, true/false")
    try:
        value = flag.type(text)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{flag.variable}={text!r}: {exc}") from None
    if flag.choices is not None and value not in flag.choices:
        raise argparse.ArgumentTypeError(
            f"{flag.variable}={text!r}: choose from {', '.join(map(str, flag.choices))}"
        )
    return value


def add_flag(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    default: Any = None,
    required: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Add the table's flag ``name`` to ``parser``; ``default`` overrides the table's default.

    The environment variable, when set, becomes the default, so a flag on the command line wins.
    A required flag is satisfied by its variable too.
    """
    flag = FLAGS[name]
    base = flag.default if default is None else default
    try:
        value = _from_environment(flag, environ)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    from_env = value is not None
    value = base if value is None else value
    shown = "" if base is None else f"; default {_show(base)}"
    help_text = f"{flag.help} (${flag.variable}{shown})".replace("%", "%%")  # argparse formats
    if flag.switch:
        parser.add_argument(
            flag.option, dest=name, action="store_true", default=bool(value), help=help_text
        )
        return
    if flag.positional:  # optional on the command line only when its variable gives it
        parser.add_argument(
            name,
            type=flag.type,
            nargs="?" if from_env or not required else None,
            default=value,
            help=help_text,
            metavar=flag.option,
        )
        return
    parser.add_argument(
        flag.option,
        dest=name,
        type=flag.type,
        default=value,
        choices=flag.choices,
        required=required and not from_env,
        help=help_text,
        metavar=None if flag.choices else name.upper(),
    )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def reference_table(commands: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of every flag: option, environment variable, default, commands, meaning.

    ``commands`` maps each subcommand to its flags and the default it gives each (None: the
    table's). ``docs/configuration.md`` holds this table; a test keeps the two equal.
    """
    lines = [
        "| flag | environment | default | commands | meaning |",
        "|---|---|---|---|---|",
    ]
    for flag in FLAGS.values():
        users = [command for command, flags in commands.items() if flag.name in flags]
        own = {c: commands[c][flag.name] for c in users if commands[c][flag.name] is not None}
        if flag.switch:
            default = "off"
        elif isinstance(flag.default, Path) and flag.default.is_absolute():
            default = "the bundled Diabetes-130 file"
        elif own:
            shown = {c: f"`{_show(v)}` ({c})" for c, v in own.items()}
            rest = [] if flag.default is None else [f"`{_show(flag.default)}`"]
            default = ", ".join([*shown.values(), *rest])
        else:
            default = "" if flag.default is None else f"`{_show(flag.default)}`"
        choices = f" ({' / '.join(map(str, flag.choices))})" if flag.choices else ""
        lines.append(
            f"| `{flag.option}` | `{flag.variable}` | {default} | {', '.join(users) or 'all'} "
            f"| {flag.help}{choices} |"
        )
    return "\n".join(lines)
