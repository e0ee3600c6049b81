"""Runs one command as a child process and measures it alone: wall seconds and peak resident
memory, through GNU time (`/usr/bin/time`, Debian package `time`). Used by
bench/convert_bench.py and bench/interp_bench.py.

Why not `os.wait4` or RUSAGE_CHILDREN from Python: Linux carries the forking process's peak RSS
into the child's `ru_maxrss` across exec, so a child of a Python process that has imported
torch reports at least that process's RSS (~800 MB). GNU time's own RSS is ~2 MB.
"""

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass

GNU_TIME = "/usr/bin/time"
# GNU time's %M (peak RSS) is in KiB.
MAXRSS_UNIT_BYTES = 1024
# Lines of a failing child's stderr quoted in the error.
STDERR_TAIL_LINES = 20


@dataclass
class Measured:
    seconds: float
    peak_bytes: int
    stdout: str


def run(cmd):
    """Runs `cmd` (a list) to completion and returns its wall time, peak RSS and stdout.
    Raises RuntimeError with the end of stderr if it exits non-zero or GNU time is missing."""
    if not os.access(GNU_TIME, os.X_OK):
        raise RuntimeError(f"{GNU_TIME} is missing; install GNU time (apt-get install time)")
    with tempfile.NamedTemporaryFile("r") as rss, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", rss.name, *map(str, cmd)],
                              stdout=out, stderr=err, stdin=subprocess.DEVNULL, check=False)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            tail = err.read().decode(errors="replace").splitlines()[-STDERR_TAIL_LINES:]
            raise RuntimeError(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n"
                               + "\n".join(tail))
        # The last line: GNU time writes "Command exited ..." lines before it on failure.
        peak_kib = int(rss.read().strip().splitlines()[-1])
        return Measured(seconds, peak_kib * MAXRSS_UNIT_BYTES,
                        out.read().decode(errors="replace"))
