"""Run a command and measure its wall time and the peak resident memory of its process tree.

The tree's resident set size (RSS) is the sum over the command's process and all its descendants,
read from ``/proc/{pid}/statm`` every ``POLL_INTERVAL_SECONDS``. Pages shared between forked
workers count once per process, so the sum overstates the physical memory of multi-process
runs, the same way for both tools. ``wait4`` adds the kernel's peak RSS of the largest single
process (``ru_maxrss``), which polling cannot miss.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

# Polling period of the process-tree RSS. Short enough to catch the peak of a preprocessing worker
# that lives for a second, long enough to cost well under 1 % of one core.
POLL_INTERVAL_SECONDS = 0.1
PAGE_SIZE_BYTES = os.sysconf("SC_PAGE_SIZE")
# ru_maxrss is in kilobytes on Linux.
RU_MAXRSS_UNIT_BYTES = 1024


@dataclass
class RunResult:
    """Outcome of one monitored command."""

    command: list[str]
    returncode: int
    wall_seconds: float
    peak_tree_rss_bytes: int
    max_process_rss_bytes: int
    log_file: Path


def _parent_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and brackets, so parse after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
    return parents


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """Return ``root`` and every process whose parent chain leads to it."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss_bytes(root: int) -> int:
    """Return the summed RSS of ``root`` and its descendants, in bytes."""
    return sum(_rss_bytes(pid) for pid in descendants(root, _parent_map()))


def run_monitored(
    command: Sequence[str],
    log_file: Path,
    environment: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_seconds: float | None = None,
) -> RunResult:
    """Run ``command`` with stdout and stderr appended to ``log_file``; return its timing and memory.

    On timeout the whole process group is killed and the return code is -9.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(str(part) for part in command)}\n")
        log.flush()
        start = time.perf_counter()
        process = subprocess.Popen(
            [str(part) for part in command], stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=cwd,
            start_new_session=True,
        )
        peak = 0
        status = None
        rusage = None
        while status is None:
            peak = max(peak, tree_rss_bytes(process.pid))
            pid, raw_status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                status, rusage = raw_status, usage
                break
            if timeout_seconds is not None and time.perf_counter() - start > timeout_seconds:
                logger.error("Timed out after %.0f s, killing: %s", timeout_seconds, " ".join(map(str, command)))
                os.killpg(process.pid, 9)
            time.sleep(POLL_INTERVAL_SECONDS)
        wall = time.perf_counter() - start
        # Popen must not wait for the pid again; mark it as reaped.
        process.returncode = os.waitstatus_to_exitcode(status)

    return RunResult(
        command=[str(part) for part in command],
        returncode=process.returncode,
        wall_seconds=wall,
        peak_tree_rss_bytes=peak,
        max_process_rss_bytes=int(rusage.ru_maxrss) * RU_MAXRSS_UNIT_BYTES,
        log_file=log_file,
    )
