"""Load on CompositionService.Predict over loopback: N concurrent clients for T seconds.

The server is ``htvs serve composition`` in a subprocess (the deployment path: CLI, bootstrap,
interceptor, metrics); each client thread has its own channel and calls Predict in a loop with
a batch of formulas drawn (fixed seed) from the bundled MP table. The baseline, measured in the
same run before the server starts, is ``predict_compositions`` called in-process on the same
batches by one caller: the ratio says what serving over gRPC with concurrency gives or costs.

Prints one JSON line: requests/s, formulas/s, p50/p99 latency (ms), errors (must be 0: exit 1
otherwise), the baseline and the ratio, the models used, and ``machine_info()``.

    .venv/bin/python benchmarks/bench_grpc_load.py [--clients 32] [--seconds 30] [--batch 16]
        [--max-workers 8] [--e-form-models DIR --band-gap-models DIR]

Without model folders the shipped models are used, or tiny random ensembles when none are
shipped yet (reported as ``"models": "tiny"``: their cost is not that of the real models).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402


def tiny_models(root: Path) -> tuple[Path, Path]:
    """Two tiny random ensembles (2 models each) for a run without trained models."""
    import torch

    from htvs.composition.model import RoostConfig, build_roost
    from htvs.composition.onnx_export import export_onnx, write_model_card

    config = RoostConfig(
        elem_fea_len=8, n_graph=1, elem_heads=1, elem_gate=(8,), elem_msg=(8,), cry_heads=1,
        cry_gate=(8,), cry_msg=(8,), trunk_hidden=(8,), out_hidden=(8,),
    )  # fmt: skip
    folders = []
    for target, units in (("e_form", "eV/atom"), ("band_gap", "eV")):
        folder = root / target
        files = []
        for k in range(2):
            model = build_roost(config, seed=k)
            with torch.no_grad():
                model.output_nns[0].fc_out.bias.fill_(0.0)
            files.append(export_onnx(model, folder / f"model_{k}.onnx", target=target, units=units).name)
        write_model_card(folder, files, target=target, units=units)
        folders.append(folder)
    return folders[0], folders[1]


def pick_models(args, scratch: Path) -> tuple[Path, Path, str]:
    from htvs.composition.ship import shipped_model_dir

    if args.e_form_models and args.band_gap_models:
        return Path(args.e_form_models), Path(args.band_gap_models), "given"
    shipped = shipped_model_dir("e_form"), shipped_model_dir("band_gap")
    if all((p / "model_card.json").exists() for p in shipped):
        return shipped[0], shipped[1], "shipped"
    ef, gap = tiny_models(scratch)
    return ef, gap, "tiny"


def formula_batches(n_batches: int, batch: int, seed: int) -> list[list[str]]:
    from htvs.datasets import load_mp_formation_energies

    formulas = load_mp_formation_energies()["formula"].to_numpy()
    rng = np.random.default_rng(seed)
    return [formulas[rng.integers(0, len(formulas), batch)].tolist() for _ in range(n_batches)]


def baseline(ef_dir: Path, gap_dir: Path, batches: list[list[str]], seconds: float) -> float:
    """Formulas/s of predict_compositions in-process, one caller, same batch size."""
    from htvs.composition import predict_compositions
    from htvs.composition.ship import load_ensemble

    ef, gap = load_ensemble("e_form", ef_dir, threads=1), load_ensemble("band_gap", gap_dir, threads=1)  # as served
    predict_compositions(batches[0], ef, gap)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = batches[done % len(batches)]
        predict_compositions(batch, ef, gap)
        done += 1
    return done * len(batches[0]) / (time.perf_counter() - start)


def start_server(ef_dir: Path, gap_dir: Path, max_workers: int) -> tuple[subprocess.Popen, int]:
    command = [
        str(Path(sys.executable).with_name("htvs")), "serve", "composition", "--port", "0",
        "--host", "127.0.0.1", "--max-workers", str(max_workers),
        "--e-form-models", str(ef_dir), "--band-gap-models", str(gap_dir),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line:
        process.wait(30)
        raise SystemExit(f"server did not start (exit {process.returncode}): {' '.join(command)}")
    return process, int(json.loads(line)["port"])


def run_load(port: int, clients: int, seconds: float, batches: list[list[str]]) -> dict[str, object]:
    import grpc

    from htvs.grpc.gen import composition_pb2 as pb
    from htvs.grpc.gen import composition_pb2_grpc as pb_grpc

    requests = [pb.PredictRequest(formulas=b) for b in batches]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(k: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.CompositionServiceStub(channel)
            stub.Predict(requests[k % len(requests)], timeout=60)  # connect + warm-up
            barrier.wait()
            i = k
            while time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                try:
                    stub.Predict(requests[i % len(requests)], timeout=60)
                    latencies[k].append(time.perf_counter() - t0)
                except grpc.RpcError:
                    errors[k] += 1
                i += clients

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + 3600  # set properly once everyone is connected
    barrier.wait()
    start = time.perf_counter()
    deadline[0] = start + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    flat = np.array([x for per in latencies for x in per])
    n = int(flat.size)
    return {
        "requests": n,
        "errors": int(sum(errors)),
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(n / elapsed, 1),
        "formulas_per_s": round(n * len(batches[0]) / elapsed, 1),
        "p50_ms": round(float(np.percentile(flat, 50)) * 1e3, 2) if n else None,
        "p99_ms": round(float(np.percentile(flat, 99)) * 1e3, 2) if n else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=16, help="formulas per Predict request")
    parser.add_argument("--max-workers", type=int, default=8, help="server worker threads")
    parser.add_argument("--baseline-seconds", type=float, default=None, help="default: min(seconds, 10)")
    parser.add_argument("--e-form-models")
    parser.add_argument("--band-gap-models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="htvs-bench-grpc-") as scratch:
        ef_dir, gap_dir, kind = pick_models(args, Path(scratch))
        batches = formula_batches(max(64, args.clients * 4), args.batch, args.seed)
        base = baseline(ef_dir, gap_dir, batches, args.baseline_seconds or min(args.seconds, 10.0))
        process, port = start_server(ef_dir, gap_dir, args.max_workers)
        try:
            load = run_load(port, args.clients, args.seconds, batches)
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(60)
    result = {
        "benchmark": "grpc_load_predict",
        "clients": args.clients,
        "batch": args.batch,
        "server_max_workers": args.max_workers,
        "models": kind,
        **load,
        "baseline_in_process_formulas_per_s": round(base, 1),
        "ratio_vs_in_process": round(float(load["formulas_per_s"]) / base, 3) if base else None,
        "server_exit_code_after_sigterm": exit_code,
        **machine_info(),
    }
    print(json.dumps(result))
    return 0 if load["errors"] == 0 and load["requests"] > 0 and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
