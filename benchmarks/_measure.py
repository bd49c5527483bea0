"""Run a command and write its wall time, CPU time and peak RSS (JSON) to a file.

Started as a separate small interpreter so that the measured command is
spawned from a small process: on Linux a child's ``ru_maxrss`` includes the
resident size of the process image it was exec'd from, so spawning it from
the (large) benchmark process would overstate its peak memory.

Usage: ``python -S _measure.py RESULT_JSON COMMAND [ARG ...]``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main() -> int:
    result, cmd = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    with open(result, "w", encoding="utf-8") as f:
        json.dump(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "maxrss_kib": usage.ru_maxrss,
                "exit": code,
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
