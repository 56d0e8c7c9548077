"""A command run on a pseudo-terminal, as a person's shell runs it: its stdout is a tty of a
given width, so what it draws only for people (rich's live views, colours) is drawn."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading
from collections.abc import Sequence


class OnTerminal:
    """The command runs from construction; a thread reads the terminal all along (a full
    terminal buffer would block the command's writes)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], columns: int = 80) -> None:
        self._master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        env = {**env, "COLUMNS": str(columns), "LINES": "24", "TERM": "xterm-256color"}
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(
            list(argv), stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while chunk := os.read(self._master, 65536):
                self._chunks.append(chunk)
        except OSError:  # EIO: the command ended, and with it the terminal's other end
            pass
        finally:
            os.close(self._master)

    def wait(self, timeout_s: float = 60) -> str:
        """Everything the command wrote (escape sequences included), once it ended."""
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=10)
        return b"".join(self._chunks).decode("utf-8", "replace")
