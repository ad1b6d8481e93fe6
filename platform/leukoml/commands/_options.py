"""Argument types shared by the sub-commands: MLflow passes every value as text."""

from __future__ import annotations

import argparse


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int(text: str) -> int:
    """An int, also from mlflow's float spelling ("32.0")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}")
    return int(value)


OPTION_TYPES = {"int": _int, "float": float, "bool": _bool, "str": str, "choice": str}


def option(name: str) -> str:
    """The command-line option of a config field: learning_rate -> --learning-rate."""
    return "--" + name.replace("_", "-")
