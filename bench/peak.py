"""Run a module or script, then print its own peak resident memory (VmHWM) as a JSON line on stderr.

ru_maxrss of a child started by fork+exec can carry the parent's size; VmHWM belongs to the new
program alone. Used by common.run_child.

    python3 bench/peak.py -m spectrum_stream scan ...   |   python3 bench/peak.py script.py args
"""

import atexit
import json
import runpy
import sys


def _report() -> None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                print(json.dumps({"peak_rss_kib": int(line.split()[1])}), file=sys.stderr)


atexit.register(_report)
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
