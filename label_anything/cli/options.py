"""Command-line plumbing shared by every sub-command: environment defaults validated like their flags,
one-line usage errors, and the argparse value types.

Every option that reads an environment variable takes its default from ``env(NAME, default)``. The value
is checked by the option's own ``type`` and ``choices``, but only when the option is not given on the
command line, and the error names the variable::

    $ LABEL_ANYTHING_PORT=80O3 label-anything serve
    label-anything serve: error: LABEL_ANYTHING_PORT='80O3': '80O3' is not a whole number (see --help)

A bad variable that the chosen command does not read is never looked at.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

SECRET_WORDS = ("AUTH", "KEY", "PASSWORD", "TOKEN", "SECRET")
"""A variable whose name holds one of these is never echoed in an error (its value may be a credential)."""
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class EnvValue(str):
    """A default read from an environment variable: a ``str`` that remembers the variable's name."""

    env_name: str

    def __new__(cls, value: str, env_name: str) -> EnvValue:
        self = super().__new__(cls, value)
        self.env_name = env_name
        return self


def env(name: str, default: Any = None) -> Any:
    """The default of an option read from ``name``: an ``EnvValue`` when the variable is set and not blank,
    else ``default``. Give string defaults (``"8003"``, not ``8003``) so argparse passes them through the
    option's ``type`` as it does a typed value.

    >>> import os; os.environ["X_DEMO"] = "7"; env("X_DEMO", "1"), env("X_DEMO").env_name
    ('7', 'X_DEMO')
    """
    import os

    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return EnvValue(value.strip(), name)


def parse_bool(text: str) -> bool:
    """argparse ``type`` for on/off words: 1/0, true/false, yes/no, on/off (any case).

    >>> parse_bool("ON"), parse_bool("0")
    (True, False)
    """
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on or off (use one of {', '.join(TRUE_WORDS + FALSE_WORDS)})")


def positive_int(text: str) -> int:
    """argparse ``type`` for a whole number above 0 (workers, seconds, pixels...).

    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def port_number(text: str) -> int:
    """argparse ``type`` for a TCP port, 1 to 65535.

    >>> port_number("8003")
    8003
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return value


def finite_float(text: str) -> float:
    """argparse ``type`` for a finite number (no nan / inf).

    >>> finite_float("1.5")
    1.5
    """
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """argparse ``type`` for a finite number of 0 or more.

    >>> non_negative_float("0")
    0.0
    """
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, and which validates ``EnvValue`` defaults.

    Sub-parsers made from it are of the same class (argparse's default), so every command gets both.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:  # argparse's hook for each value
        if not isinstance(arg_string, EnvValue):
            return super()._get_value(action, arg_string)
        name = arg_string.env_name
        shown = "…" if any(word in name for word in SECRET_WORDS) else str(arg_string)
        convert = parse_bool if isinstance(action, argparse.BooleanOptionalAction) else action.type
        try:
            value = convert(str(arg_string)) if callable(convert) else str(arg_string)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else f"not a valid {_type_name(convert)}"
            self.error(f"{name}={shown!r}: {reason.replace(str(arg_string), shown)}")
        if action.choices is not None and value not in action.choices:
            self.error(f"{name}={shown!r}: choose one of {', '.join(map(str, action.choices))}")
        return value


def _type_name(convert: Any) -> str:
    return {int: "whole number", float: "number"}.get(convert, getattr(convert, "__name__", "value"))


def print_error(message: str) -> None:
    """One line on stderr, as every command reports a mistake."""
    print(f"label-anything: error: {message}", file=sys.stderr)
