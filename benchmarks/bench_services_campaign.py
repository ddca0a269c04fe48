"""What running a campaign through the services costs against running it in one process.

Starts the five services in this process on loopback (real gRPC channels), each with its
StageService on a shared directory store, then runs the same campaign twice on fresh stores: in
process, and with every stage on its service (``StageClient``). Both runs load their models
before the clock starts (the services at start-up, the embedded backend by a warm-up call), so
the ratio is the cost of the services path itself: the RPCs, the configuration check on every
call, the manifests read back by the client. The services' ONNX sessions use onnxruntime's
default thread count here, as the embedded backend does (deployed servers use one per call and
get their parallelism from concurrent calls). It also checks that the two runs give the same
funnel, and reports the wall time of every stage in both.

    .venv/bin/python benchmarks/bench_services_campaign.py configs/demo.yaml [--top-k 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402


def _stage_times(store, config) -> dict[str, float]:
    from htvs.campaign.graph import STAGES
    from htvs.store import StageManifest

    out: dict[str, float] = {}
    for stage in STAGES:
        for key in store.list(f"stages/{stage.name}/"):
            if key.endswith("manifest.json"):
                manifest = StageManifest.model_validate(store.get_json(key))
                out[stage.name] = out.get(stage.name, 0.0) + manifest.timings_s.get("total", 0.0)
    return {k: round(v, 2) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--top-k", type=int, default=0, help="validation.top_k (stage 7 MD is hours; 0 skips)")
    args = parser.parse_args(argv)

    from htvs.campaign import load_campaign, run_campaign
    from htvs.campaign.remote import StageClient
    from htvs.campaign.stages import InProcessBackend
    from htvs.grpc.serve import build_servicer, build_stage_servicer
    from htvs.grpc.server import create_server
    from htvs.store import open_store

    config = load_campaign(args.config)
    config = config.model_copy(update={"validation": config.validation.model_copy(update={"top_k": args.top_k})})
    work = Path(tempfile.mkdtemp(prefix="htvs-bench-services-"))
    root = open_store(work / "store")
    servers, addresses = [], {}
    for name in ("substitution", "composition", "structure", "conductivity", "dft"):
        servicer = build_servicer(name, threads=None)  # onnxruntime's default threads, as in process
        server, port = create_server("127.0.0.1:0", servicer, build_stage_servicer(name, servicer, root))
        server.start()
        servers.append(server)
        addresses[name] = f"127.0.0.1:{port}"

    backend = InProcessBackend()
    backend.models(config)  # load the ONNX ensembles before the clock, as the services did
    backend.predict(["Li3PS4"], config)
    start = time.perf_counter()
    local = run_campaign(config, open_store(work / "local"), work / "local-out", backend=backend)
    in_process_s = time.perf_counter() - start

    client = StageClient(addresses)
    start = time.perf_counter()
    remote = run_campaign(config, root.below("campaigns/bench"), work / "remote-out", services=client)
    services_s = time.perf_counter() - start
    client.close()
    for server in servers:
        server.stop(0)

    result = {
        "benchmark": "campaign through the five services vs in process",
        "config": str(args.config),
        "validation_top_k": args.top_k,
        "in_process_s": round(in_process_s, 1),
        "services_s": round(services_s, 1),
        "services_over_in_process": round(services_s / in_process_s, 3),
        "same_funnel": local == remote,
        "funnel": local,
        "stage_s_in_process": _stage_times(open_store(work / "local"), config),
        "stage_s_services": _stage_times(root.below("campaigns/bench"), config),
        "machine": machine_info(),
        "command": "benchmarks/bench_services_campaign.py " + " ".join(argv or sys.argv[1:]),
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0 if local == remote else 1


if __name__ == "__main__":
    raise SystemExit(main())
