"""`python -m rbee.dataplane.worker`: the same as the rbee-worker command."""

from .command import main

main(prog_name="rbee-worker")
