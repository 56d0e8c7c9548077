"""rbee's Textual dashboard (`rbee tui`)."""
