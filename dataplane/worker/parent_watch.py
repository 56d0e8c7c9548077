"""A worker dies with its hive: PR_SET_PDEATHSIG on Linux, a parent-pid watchdog everywhere.

SIGKILL, not SIGTERM: an orphan has nothing to save (the model file is read-only, its log is
written line by line), and a graceful drain could hold the model's RAM for the whole drain
timeout, where an orphan should be gone at once (the fault suite wants it within 2 s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL_S = 0.5  # how long an orphan may live where there is no prctl (macOS)


class ParentGone(RuntimeError):
    pass


def die_with_parent(parent_pid: int) -> None:
    """Ends this process when `parent_pid`, which must be its parent now, exits.

    Raises ParentGone when the parent is already gone (or never was this process's parent).
    """
    if sys.platform.startswith("linux"):
        _set_pdeathsig(signal.SIGKILL)
    # The parent may have died before prctl took effect; then nothing will ever signal us.
    if os.getppid() != parent_pid:
        raise ParentGone(
            f"process {parent_pid} is not this worker's parent "
            f"(its parent is {os.getppid()}): the hive that started it is gone"
        )
    # A backstop on Linux too: PDEATHSIG follows the parent *thread* that forked us.
    threading.Thread(target=_watch, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _set_pdeathsig(sig: signal.Signals) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        log.warning(
            "prctl(PR_SET_PDEATHSIG) failed (%s): relying on the parent watchdog",
            os.strerror(errno),
        )


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_INTERVAL_S)
    log.warning("the hive (pid %d) is gone: exiting", parent_pid)
    os.kill(os.getpid(), signal.SIGKILL)
