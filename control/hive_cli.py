"""`rbee-hive`: the per-node pool manager's command line."""

from __future__ import annotations

import click

from rbee.dataplane.protocol import VERSION


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="rbee-hive")
def main() -> None:
    """The pool manager of one node: spawns workers, keeps the model catalog.

    The daemon arrives with the hive issue.
    """
