"""rbee's Textual dashboard (`rbee tui`). It reaches the cluster only through rbee.control.keeper.

Importing this package loads nothing of Textual: `rbee`'s other commands start without it.
"""
