"""``htvs serve`` as a real process: SIGTERM while a call is in flight lets the call finish, and
the process exits 0 within 5 s (what a container's process 1 must do for ``docker stop`` and the
kubelet). The call in flight is a ``Substitute`` of the bundled set with its substitutions listed
(about 1 s); it is seen in flight on the metrics endpoint before the signal is sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(180)]

#: The bound of the task: from SIGTERM to the exit.
EXIT_WITHIN_S = 5.0


def _in_flight(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    rows = [line for line in text.splitlines()
            if line.startswith('htvs_grpc_requests_in_flight{service="SubstitutionService"}')]
    return float(rows[0].split()[-1]) if rows else 0.0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_drains_the_call_in_flight_and_exits_0() -> None:
    from htvs.grpc.gen import substitution_pb2 as pb, substitution_pb2_grpc as pb_grpc

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("htvs")), "serve", "substitution", "--port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        announced = json.loads(process.stdout.readline() or "{}")  # one JSON line once serving
        assert announced.get("service") == "htvs.v1.SubstitutionService", process.stderr.read()
        request = pb.SubstituteRequest(prototype_set="bundled", include_substitutions=True)
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(f"127.0.0.1:{announced['port']}", options=options) as channel:
            stub = pb_grpc.SubstitutionServiceStub(channel)
            for _attempt in range(3):  # until the signal lands while the call runs
                call = stub.Substitute.future(request, timeout=60)
                while not call.done() and _in_flight(announced["metrics_port"]) < 1:
                    time.sleep(0.01)
                if not call.done():
                    break
            else:
                pytest.fail("never caught a Substitute call in flight")
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            reply = call.result()  # completes: the server drains it
            assert reply.substitutions and reply.formulas
            code = process.wait(timeout=30)
            took = time.monotonic() - signalled
        assert code == 0, process.stderr.read()
        assert took <= EXIT_WITHIN_S, f"exited {took:.1f} s after SIGTERM"
        assert "stopping htvs.v1.SubstitutionService" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_while_loading_exits_0_at_once() -> None:
    """Model loading can take minutes; a stop then must not wait for it (nothing to drain)."""
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("htvs")), "serve", "substitution", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in process.stderr:  # the handlers are installed before this line
            if "loading substitution" in line:
                break
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = process.wait(timeout=30)
        took = time.monotonic() - signalled
        assert code == 0, process.stderr.read()
        assert took <= EXIT_WITHIN_S, f"exited {took:.1f} s after SIGTERM"
        assert process.stdout.read() == ""  # never announced serving
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
