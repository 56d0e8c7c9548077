"""`python -m rbee.dataplane`: the same as the rbee-worker command."""

from .cli import main

main(prog_name="rbee-worker")
