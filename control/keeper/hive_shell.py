"""The shell commands that prove on a node which process is its hive, and stop it, with no
Python started there: `rbee ssh-down`'s one command per node (signal it and wait until it is
gone), and `rbee ssh-up`'s look whether a hive runs before it starts one.

`rbee-hive stop` and `rbee-hive pid` do the same in Python, but their start-up (0.35 s of CPU
each) was most of what ssh-down cost a node, and 60 of them at once took 10 s. On Linux the
proof needs only what /proc and flock(1) show: the pid file (dataplane/plumbing/pidfile.py)
is locked by a live hive, and records its pid and start time; the process with that pid is
the hive only if it started then (btime + field 22 of /proc/PID/stat, as psutil computes it,
within process_proof's tolerance). Anywhere else (no /proc or no flock(1): macOS), or for an
older hive's record without a start time, the script hands over to `rbee-hive stop` (or
`pid`), which proves it with psutil. The words are `rbee-hive`'s own (cli_options.
stop_proven, pidfile.not_running), and so are the exit codes: 3 when none runs (`pid`) or
`only_pid` does not (NOT_RUNNING_EXIT), 1 when the hive cannot be stopped.
"""

from __future__ import annotations

import shlex

from rbee.control.hive.settings import PID_FILE
from rbee.dataplane.plumbing.pidfile import NOT_RUNNING_EXIT
from rbee.dataplane.plumbing.process_proof import KILL_WAIT_S, START_TIME_TOLERANCE_S

_TICK_S = 0.1  # how often the script looks whether the hive is gone

# $1 pid file, $2 rbee-hive, $3 state dir, $4 grace (ticks), $5 only pid (or ""), $6 grace (s),
# $7 "pid" (only say the proven pid, as `rbee-hive pid`) or "stop"
_PROOF = """\
f=$1 hive=$2 state=$3 grace=$4 only=$5 secs=$6 mode=$7
fallback() {{
  [ "$mode" = pid ] && exec "$hive" pid --state-dir "$state"
  exec "$hive" stop --state-dir "$state" --timeout-s "$secs" ${{only:+--only-pid $only}}
}}
[ -r /proc/self/stat ] && command -v flock >/dev/null 2>&1 || fallback
not_running() {{
  echo "rbee-hive is not running$1"
  [ -z "$only" ] && [ "$mode" = stop ] && exit 0
  exit {not_running}
}}
[ -s "$f" ] || not_running ""
{{ read -r pid; read -r started; }} < "$f"
case $pid in ''|*[!0-9]*) not_running "";; esac
[ -n "$started" ] || fallback
stat_of() {{ s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; echo "${{s##*) }}"; }}
alive() {{ r=$(stat_of "$1") || return 1; [ "${{r%% *}}" != Z ]; }}
proven() {{
  r=$(stat_of "$pid") || return 1
  set -- $r
  [ "$1" != Z ] || return 1
  awk -v b="$(awk '/^btime/ {{print $2}}' /proc/stat)" -v t="${{20}}" \\
    -v hz="$(getconf CLK_TCK 2>/dev/null || echo 100)" -v s="$started" \\
    'BEGIN {{ d = b + t / hz - s; if (d < 0) d = -d; exit !(d <= {tolerance}) }}'
}}
# The lock first (shared, released at once, as pidfile.check): no hive holds it, none runs.
flock -n -E 75 -s "$f" true; locked=$?
[ "$locked" = 75 ] || {{
  [ "$locked" = 0 ] && not_running " (stale ${{f##*/}} names pid $pid: left alone)"
  fallback
}}
proven || fallback  # locked, but not by the process the record names: rbee-hive says why
"""

_PID = """\
echo "$pid"
"""

_STOP = """\
if [ -n "$only" ] && [ "$pid" != "$only" ]; then
  echo "rbee-hive (pid $only) is gone (pid $pid runs now): nothing stopped"; exit {not_running}
fi
if ! kill -TERM "$pid" 2>/dev/null; then
  alive "$pid" || {{ echo "rbee-hive stopped (pid $pid)"; exit 0; }}
  echo "not allowed to signal rbee-hive (pid $pid): it runs as another user" >&2; exit 1
fi
kill -CONT "$pid" 2>/dev/null  # a stopped (SIGSTOP) process handles no SIGTERM
i=0
while alive "$pid"; do
  if [ "$i" -ge "$grace" ]; then
    kill -KILL "$pid" 2>/dev/null
    i=0
    while alive "$pid"; do
      if [ "$i" -ge {kill_ticks} ]; then
        echo "rbee-hive (pid $pid) still runs {kill_wait:g} s after SIGKILL" \\
          "(stuck in the kernel?): see \\`rbee-hive pid\\`" >&2
        exit 1
      fi
      sleep {tick}; i=$((i + 1))
    done
    echo "rbee-hive (pid $pid) did not stop in $secs s: killed"; exit 0
  fi
  sleep {tick}; i=$((i + 1))
done
echo "rbee-hive stopped (pid $pid)"
"""


def stop_script(hive_bin: str, state_dir: str, grace_s: float, only_pid: int | None) -> str:
    """The `sh -c` script that stops the hive of `state_dir` (SIGTERM, SIGKILL past
    `grace_s`), only a process proven to be it, and with `only_pid` only while it is that
    process; it prints one line, as `rbee-hive stop` does."""
    return _script(_PROOF + _STOP, hive_bin, state_dir, grace_s, only_pid, "stop")


def pid_script(hive_bin: str, state_dir: str) -> str:
    """The `sh -c` script that prints the pid of the hive of `state_dir`, proven, as
    `rbee-hive pid` does: exit NOT_RUNNING_EXIT, saying so, when none runs."""
    return _script(_PROOF + _PID, hive_bin, state_dir, 0.0, None, "pid")


def _script(
    template: str, hive_bin: str, state_dir: str, grace_s: float, only_pid: int | None, mode: str
) -> str:
    body = template.format(
        not_running=NOT_RUNNING_EXIT,
        tolerance=START_TIME_TOLERANCE_S,
        kill_ticks=round(KILL_WAIT_S / _TICK_S),
        kill_wait=KILL_WAIT_S,
        tick=_TICK_S,
    )
    args = [
        f"{state_dir}/{PID_FILE}",
        hive_bin,
        state_dir,
        str(round(grace_s / _TICK_S)),
        "" if only_pid is None else str(only_pid),
        f"{grace_s:g}",
        mode,
    ]
    return f"set -- {shlex.join(args)}\n{body}"
