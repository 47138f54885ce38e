"""Which process owns a RUNNING run, and what becomes of runs whose process died without closing them.

A run carries its owner (host, pid and the process's start time, so that a reused pid is not taken
for the owner). When a command opens a store, every RUNNING mbsbench run owned by a dead process of
this host is tagged `mbsbench.orphaned` and ended KILLED; `bench run --resume` reopens it. Runs of
other hosts are left as they are: their liveness cannot be seen from here.
"""

import os
import socket
import time

from bench.console import status
from bench.tracking.schema import EXPERIMENT_PREFIX

OWNER_TAGS = ("mbsbench.host", "mbsbench.pid", "mbsbench.pid_started")


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or ''."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_tags() -> dict[str, str]:
    """The tags that name this process as a run's owner."""
    return dict(zip(OWNER_TAGS, (socket.gethostname(), str(os.getpid()), _started(os.getpid()))))


def is_alive(host: str, pid: str, started: str) -> bool | None:
    """Whether the owner lives: None when it is on another host (unknowable from here)."""
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    return not started or _started(int(pid)) == started


def mark_orphans(tracking) -> list[str]:
    """End as KILLED, with a tag saying why, every RUNNING mbsbench run whose process died; their ids."""
    mine = f"name LIKE '{EXPERIMENT_PREFIX}%'"
    experiments = [e.experiment_id for e in tracking.search_experiments(filter_string=mine)]
    if not experiments:
        return []
    marked = []
    for run in tracking.search_runs(experiments, filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if is_alive(*(tags.get(key, "") for key in OWNER_TAGS)) is not False:
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        tracking.set_tag(run.info.run_id, "mbsbench.orphaned", f"process {tags['mbsbench.pid']} on "
                         f"{tags['mbsbench.host']} ended without closing this run; marked KILLED at {when}")
        tracking.set_terminated(run.info.run_id, "KILLED")
        marked.append(run.info.run_id)
        status(f"note: run {run.info.run_id} ({tags.get('mlflow.runName', '')}) was left RUNNING by a process "
               "that died: marked KILLED (bench run --resume continues it)")
    return marked
