"""What a SIGKILL in the middle of stage 2 costs: work lost and the overhead of resuming.

Runs ``htvs campaign stage predict --config CONFIG --store STORE`` (stages 1-2, every shard) in
a subprocess on a fresh store, SIGKILLs it once ``--kill-after`` predict shards have written
their manifests (the middle of stage 2 for the paper config's 64 shards), then runs the same
command again to completion. Reports:

* ``lost_s``: the work thrown away — time from the last manifest written before the kill to the
  kill (the shard in flight);
* ``resume_overhead_s``: wall time of the resumed run minus the compute time of the shards it
  ran (their manifests' ``total``): start-up, config validation, and recognising the finished
  stages and shards as cache hits;
* whether the resumed run recomputed any finished shard (it must not).

    .venv/bin/python benchmarks/bench_resume.py configs/paper.yaml [--kill-after 32] [--store DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402


def _manifests(store: Path) -> dict[str, dict]:
    out = {}
    for path in (store / "stages" / "predict").glob("*/manifest.json"):
        out[path.parent.name] = json.loads(path.read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--kill-after", type=int, default=32, help="predict shards finished before the SIGKILL")
    parser.add_argument("--store", type=Path, default=None, help="fresh store folder (default: a temp dir)")
    args = parser.parse_args(argv)
    store = args.store or Path(tempfile.mkdtemp(prefix="htvs-resume-"))
    if store.exists():
        shutil.rmtree(store)
    htvs = Path(sys.executable).with_name("htvs")
    command = [str(htvs), "campaign", "stage", "predict", "--config", str(args.config), "--store", str(store)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while len(_manifests(store)) < args.kill_after:
        if first.poll() is not None:
            raise SystemExit(f"the first run ended (status {first.returncode}) before {args.kill_after} shards")
        time.sleep(0.2)
    # kill in the middle of the next shard: half a shard's time after the last manifest
    done = _manifests(store)
    shard_s = sum(m["timings_s"]["total"] for m in done.values()) / len(done)
    time.sleep(shard_s / 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    before = _manifests(store)
    last_written = max(os.path.getmtime(store / "stages" / "predict" / k / "manifest.json") for k in before)

    t1 = time.time()
    second = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    resumed_wall = time.time() - t1
    if second.returncode != 0:
        raise SystemExit(f"the resumed run failed: {second.stderr[-2000:]}")
    after = _manifests(store)
    new = {k: m for k, m in after.items() if k not in before}
    recomputed = [k for k, m in before.items() if after[k]["created"] != m["created"]]
    computed_s = sum(m["timings_s"]["total"] for m in new.values())
    report = {
        "machine": machine_info(),
        "command": " ".join(command),
        "shards_total": len(after),
        "shards_before_kill": len(before),
        "first_run_wall_s": killed_at - t0,
        "mean_shard_s": shard_s,
        "lost_s": killed_at - last_written,
        "resumed_wall_s": resumed_wall,
        "resumed_compute_s": computed_s,
        "resume_overhead_s": resumed_wall - computed_s,
        "recomputed_finished_shards": recomputed,
        "store": str(store),
    }
    print(json.dumps(report, indent=1))
    return 0 if not recomputed else 1


if __name__ == "__main__":
    sys.exit(main())
