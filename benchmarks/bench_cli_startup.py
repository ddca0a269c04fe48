"""Start-up time of the single-formula CLI commands, measured as a user runs them.

Each command runs as a fresh process (the ``htvs`` script beside the interpreter) ``--repeat`` times; the
report gives the median wall time and the median CPU time (user + system) of the process.
On a loaded machine the CPU time is the steadier figure: it is what the command costs, and
it is close to the wall time on an idle core.

``--src DIR`` puts another checkout's ``src`` first on ``PYTHONPATH`` so that an older
version can be measured in the same run with the same interpreter and packages (the
baseline):

    git worktree add /tmp/htvs-before <commit>
    .venv/bin/python benchmarks/bench_cli_startup.py --src /tmp/htvs-before/src --label before
    .venv/bin/python benchmarks/bench_cli_startup.py --label after
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "window": ["window", "Li3PS4"],
    "hull": ["hull", "Li3PS4", "--ef", "-1.2"],
    "predict": ["predict", "Li3PS4"],
    "prototypes": ["prototypes", "--source", "bundled"],
    "help": ["--help"],
}


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``htvs ARGS``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "htvs"), *args], env=env, capture_output=True, text=True, timeout=600
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"htvs {' '.join(args)} failed ({done.returncode}): {done.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=None, help="a checkout's src folder to measure instead of the installed htvs")
    parser.add_argument("--label", default="current")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--commands", default=",".join(COMMANDS), help=f"comma-separated, from {list(COMMANDS)}")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120")
    if args.src:
        env["PYTHONPATH"] = os.path.abspath(args.src) + os.pathsep + env.get("PYTHONPATH", "")
    results = {}
    for name in args.commands.split(","):
        run_once(COMMANDS[name], env)  # warm the file cache; not counted
        runs = [run_once(COMMANDS[name], env) for _ in range(args.repeat)]
        results[name] = {
            "wall_s": round(statistics.median(w for w, _ in runs), 2),
            "cpu_s": round(statistics.median(c for _, c in runs), 2),
        }
        print(f"{args.label:>8}  {name:<11} wall {results[name]['wall_s']:6.2f} s   cpu {results[name]['cpu_s']:6.2f} s", flush=True)
    print(json.dumps({"label": args.label, "machine": platform.platform(), "cpus": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
