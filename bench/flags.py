"""Command-line flags for config fields, shared by the benchmark scripts."""

from __future__ import annotations

import argparse


def add_config_flags(parser: argparse.ArgumentParser, defaults, names) -> None:
    """A `--name` flag for each config field in `names`, typed and defaulted by the `defaults` instance."""
    for name in names:
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)


def config_overrides(args: argparse.Namespace, names) -> dict:
    """The values of the flags `add_config_flags` made, as config keyword arguments."""
    return {name: getattr(args, name) for name in names}
