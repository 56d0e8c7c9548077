"""`rbee`: the keeper's command line (operator machine)."""

from __future__ import annotations

import click

from rbee.dataplane.protocol import VERSION


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="rbee")
def main() -> None:
    """Run LLM inference on the machines you already own.

    The keeper's commands (ssh-up, infer, workers, models, tui) arrive with the keeper
    issue; today `rbee-worker` serves a model on its own.
    """
