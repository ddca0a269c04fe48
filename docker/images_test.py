#!/usr/bin/env python3
"""Build the service images with podman and smoke-test every service on its image.

Run from the repository root with the project's virtual environment (``make images-test``):

    .venv/bin/python docker/images_test.py                 # base (once), light and full images, all checks
    .venv/bin/python docker/images_test.py --skip-build    # reuse the images built before
    .venv/bin/python docker/images_test.py --dry-run       # print the podman commands, run nothing

Steps:

1. A local Debian bookworm base image (``localhost/htvs-base:bookworm``), made once with
   ``debootstrap`` when it does not exist: Python 3.11 with venv and pip, the CA certificates of this
   machine (so HTTPS works inside builds where it is intercepted), ``python`` and ``pip`` commands like
   the public ``python`` images. Builds use it as ``PYTHON_IMAGE`` because no registry may be reachable;
   ``--base-image python:3.11.14-slim-bookworm`` builds on the public base instead.
2. The images: ``light`` (``Dockerfile.service``, no extras) and ``full`` (``HTVS_EXTRAS=all``). The
   GPU image needs an NVIDIA CUDA base from a registry and is skipped unless ``--gpu-base`` names one.
   During builds the folder of local wheels (``--find-links``, default: this machine's pip
   ``find-links``) is mounted with a ``pip.conf`` naming it, so torch comes from disk.
3. Per service: ``podman run --read-only --user 10001:10001 --tmpfs /tmp``, wait for the gRPC health
   check to report SERVING on the published port, check the uid and the read-only root inside the
   container, send one real request and check the answer (against the same code run on this host
   where it is deterministic), read ``/metrics``, then ``podman stop -t 10`` (SIGTERM) and check the
   container exits with code 0 within 5 s.
4. A table on stdout and ``images-test-out/summary.json``.

Needs root (podman's system storage, debootstrap); installs ``podman``, ``runc`` and ``debootstrap``
with apt-get when they are missing (and says so).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "localhost/htvs-base:bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
STOP_LIMIT_S = 5.0
LOCK = "/var/tmp/htvs-images-test.lock"
# packages of the local base: Python 3.11 (bookworm's python3) with venv and pip, CA certificates;
# passwd for groupadd/useradd in the runtime stage is part of minbase
BASE_PACKAGES = ["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"]


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    extras: str
    services: tuple[str, ...]


IMAGES = {
    "light": Image("light", "docker/Dockerfile.service", "", ("substitution", "composition", "structure", "conductivity")),
    "full": Image("full", "docker/Dockerfile.service", "all", ("generator", "dft")),
    "gpu": Image("gpu", "docker/Dockerfile.gpu", "validate", ()),
}


class Failure(Exception):
    """A step that failed; the message names what and why."""


@dataclass
class Check:
    service: str
    image: str
    health: str = "not run"
    health_s: float | None = None
    uid: str = "not run"
    read_only: str = "not run"
    request: str = "not run"
    metrics: str = "not run"
    stop: str = "not run"
    stop_s: float | None = None
    exit_code: int | None = None
    ok: bool = False
    log_tail: list[str] = field(default_factory=list)


@dataclass
class Built:
    image: str
    tag: str
    status: str
    build_s: float | None = None
    size_bytes: int | None = None
    note: str = ""


# ----------------------------------------------------------------------------------- commands


class Runner:
    """Runs (or, with dry_run, prints) commands; podman gets this script's containers.conf."""

    def __init__(self, out: Path, dry_run: bool, nice: int) -> None:
        self.out, self.dry_run, self.nice = out, dry_run, nice
        self.env = dict(os.environ)
        self.env["CONTAINERS_CONF"] = str(out / "containers.conf")

    def show(self, argv: list[str]) -> None:
        print("+ " + shlex.join(argv), flush=True)

    def run(self, argv: list[str], *, check: bool = True, log: Path | None = None, quiet: bool = False,
            timeout: float | None = None, input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
        if self.dry_run:
            self.show(argv)
            return subprocess.CompletedProcess(argv, 0, "", "")
        if not quiet:
            self.show(argv)
        if log is not None:
            with log.open("w") as handle:
                result = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=self.env,
                                        timeout=timeout, input=input_bytes)
            result.stdout = ""
        else:
            result = subprocess.run(argv, capture_output=True, text=input_bytes is None, env=self.env,
                                    timeout=timeout, input=input_bytes)
        if check and result.returncode != 0:
            tail = tail_of(log) if log is not None else _text(result.stderr).strip().splitlines()[-15:]
            raise Failure(f"`{shlex.join(argv[:6])} ...` exited {result.returncode}:\n  " + "\n  ".join(tail))
        return result

    def podman(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(["podman", *args], **kwargs)


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def tail_of(path: Path | None, n: int = 20) -> list[str]:
    if path is None or not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-n:]


def write_containers_conf(out: Path) -> Path:
    """podman's defaults fail in some sandboxes (setrlimit, hybrid cgroups): ulimits within this
    process's hard limit, runc, cgroupfs, a file events log."""
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard_nofile == resource.RLIM_INFINITY else hard_nofile
    path = out / "containers.conf"
    path.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return path


def host_find_links() -> str | None:
    """The first local folder of this machine's pip ``find-links`` (environment or pip config)."""
    candidates = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            candidates += value.strip().strip("'\"").split()
    for candidate in candidates:
        path = Path(candidate.removeprefix("file://"))
        if path.is_dir():
            return str(path)
    return None


# ----------------------------------------------------------------------------------- preflight


def preflight(args: argparse.Namespace, runner: Runner) -> None:
    if args.dry_run:
        return
    if os.geteuid() != 0:
        raise Failure(f"run as root (podman's system storage, debootstrap); this is uid {os.geteuid()}")
    wanted = ["podman", "runc"] + (["debootstrap"] if args.base_image == DEFAULT_BASE else [])
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if missing:
        if shutil.which("apt-get") is None:
            raise Failure(f"{', '.join(missing)} not installed and no apt-get to install it")
        print(f"installing {' '.join(missing)} with apt-get (not found on PATH)", flush=True)
        runner.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], log=args.out / "apt.log")


# ----------------------------------------------------------------------------------- base image


def image_exists(runner: Runner, tag: str) -> bool:
    if runner.dry_run:
        return False
    return runner.podman("image", "exists", tag, check=False, quiet=True).returncode == 0


def make_base(args: argparse.Namespace, runner: Runner) -> dict:
    """The local Debian bookworm base (debootstrap), made once; returns its record for the summary."""
    tag = args.base_image
    if tag != DEFAULT_BASE:
        return {"tag": tag, "status": "given"}
    if image_exists(runner, tag) and not args.rebuild_base:
        print(f"base image {tag}: exists (--rebuild-base to make it again)", flush=True)
        return {"tag": tag, "status": "cached"}
    print(f"base image {tag}: debootstrap bookworm from {args.mirror} (about 2-4 min)", flush=True)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="htvs-base-", dir="/var/tmp")) if not runner.dry_run else Path("/var/tmp/htvs-base-XXXX")
    rootfs = work / "rootfs"
    try:
        runner.run(["nice", "-n", str(args.nice), "debootstrap", "--variant=minbase",
                    "--include=" + ",".join(BASE_PACKAGES), "bookworm", str(rootfs), args.mirror],
                   log=args.out / "debootstrap.log")
        cas = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
        if not runner.dry_run:
            target = rootfs / "usr/local/share/ca-certificates"
            target.mkdir(parents=True, exist_ok=True)
            for ca in cas:
                shutil.copy2(ca, target / ca.name)
            # the base plays the public python image: pip may install into the system interpreter
            for marker in (rootfs / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
                marker.unlink()
            for name in ("pip",):
                link = rootfs / "usr/local/bin" / name
                if not link.exists():
                    link.symlink_to("/usr/bin/pip3")
        else:
            print(f"+ copy {len(cas)} CA file(s) from {HOST_CA_DIR} into the rootfs; drop EXTERNALLY-MANAGED", flush=True)
        runner.run(["chroot", str(rootfs), "update-ca-certificates"], log=args.out / "base-ca.log")
        runner.run(["chroot", str(rootfs), "sh", "-c", "apt-get clean && rm -rf /var/lib/apt/lists/*"])
        bundle = "/etc/ssl/certs/ca-certificates.crt"
        import_argv = ["podman", "import",
                       "--change", f"ENV SSL_CERT_FILE={bundle}", "--change", f"ENV PIP_CERT={bundle}",
                       "--change", f"ENV REQUESTS_CA_BUNDLE={bundle}",
                       "--change", 'CMD ["python3"]', "-", tag]
        if runner.dry_run:
            runner.show(["tar", "-C", str(rootfs), "-c", "."])
            runner.show(import_argv)
        else:
            runner.show(["tar", "-C", str(rootfs), "-c", ".", "|", *import_argv])
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            result = subprocess.run(import_argv, stdin=tar.stdout, capture_output=True, text=True, env=runner.env)
            tar.stdout.close()
            tar.wait()
            if result.returncode != 0 or tar.returncode != 0:
                raise Failure(f"podman import of the base {tag} failed: {result.stderr.strip()[-2000:]}")
    finally:
        if not runner.dry_run:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - start
    version = "" if runner.dry_run else runner.podman("run", "--rm", tag, "python", "--version", quiet=True).stdout.strip()
    print(f"base image {tag}: made in {seconds:.0f} s ({version})", flush=True)
    return {"tag": tag, "status": "built", "build_s": round(seconds, 1), "python": version}


# ----------------------------------------------------------------------------------- builds


def tag_of(args: argparse.Namespace, image: str) -> str:
    return f"{args.tag_prefix}-{image}:{args.tag}"


def build_argv(args: argparse.Namespace, image: Image, pip_conf: Path | None) -> list[str]:
    argv = ["nice", "-n", str(args.nice), "podman", "build", "--network", "host",
            "-f", image.dockerfile, "-t", tag_of(args, image.name)]
    if image.name == "gpu":
        argv += ["--build-arg", f"CUDA_IMAGE={args.gpu_base}"]
    else:
        argv += ["--build-arg", f"PYTHON_IMAGE={args.base_image}"]
    argv += ["--build-arg", f"HTVS_EXTRAS={image.extras}"]
    if args.torch_index_url:
        argv += ["--build-arg", f"TORCH_INDEX_URL={args.torch_index_url}"]
    if args.find_links:
        argv += ["-v", f"{args.find_links}:/opt/wheels:ro"]
        if pip_conf is not None:
            argv += ["-v", f"{pip_conf}:/etc/pip.conf:ro"]
    return argv + ["."]


def write_pip_conf(args: argparse.Namespace) -> Path | None:
    if not args.find_links:
        return None
    path = args.out / "pip.conf"
    path.write_text("[global]\nfind-links = /opt/wheels\ncert = /etc/ssl/certs/ca-certificates.crt\n"
                    "default-timeout = 180\n")
    return path


def image_size(runner: Runner, tag: str) -> int | None:
    if runner.dry_run:
        runner.show(["podman", "image", "inspect", "--format", "{{.Size}}", tag])
        return None
    result = runner.podman("image", "inspect", "--format", "{{.Size}}", tag, check=False, quiet=True)
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip().isdigit() else None


def build(args: argparse.Namespace, runner: Runner, image: Image, pip_conf: Path | None) -> Built:
    tag = tag_of(args, image.name)
    if image.name == "gpu" and not args.gpu_base:
        print("gpu image: skipped (needs an NVIDIA CUDA base from a registry; give one with --gpu-base)", flush=True)
        return Built("gpu", tag, "skipped", note="no CUDA base image here (--gpu-base)")
    if args.skip_build:
        if not runner.dry_run and not image_exists(runner, tag):
            raise Failure(f"--skip-build: image {tag} does not exist; build it first (without --skip-build)")
        return Built(image.name, tag, "reused", size_bytes=image_size(runner, tag))
    log = args.out / f"build-{image.name}.log"
    print(f"{image.name} image {tag}: building ({image.dockerfile}, HTVS_EXTRAS={image.extras or '(none)'}); "
          f"log {log}", flush=True)
    start = time.monotonic()
    try:
        runner.run(build_argv(args, image, pip_conf), log=log, timeout=args.build_timeout)
    except Failure as error:
        raise Failure(f"build of the {image.name} image {tag} failed; last lines of {log}:\n"
                      + "\n".join("  " + line for line in tail_of(log))) from error
    except subprocess.TimeoutExpired as error:
        raise Failure(f"build of the {image.name} image {tag} ran past {args.build_timeout} s; "
                      f"last lines of {log}:\n" + "\n".join("  " + line for line in tail_of(log))) from error
    if runner.dry_run:
        image_size(runner, tag)
        return Built(image.name, tag, "dry run")
    seconds = time.monotonic() - start
    size = image_size(runner, tag)
    print(f"{image.name} image {tag}: built in {seconds:.0f} s, {human(size)}", flush=True)
    return Built(image.name, tag, "built", round(seconds, 1), size)


def human(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


# ----------------------------------------------------------------------------------- smoke tests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_argv(tag: str, service: str, name: str, port: int, metrics_port: int) -> list[str]:
    return ["podman", "run", "-d", "--name", name, "--read-only", "--user", "10001:10001",
            "--tmpfs", "/tmp", "-e", "HOME=/tmp", "-e", "HTVS_GENERATOR_THREADS=2",
            "-p", f"127.0.0.1:{port}:50051", "-p", f"127.0.0.1:{metrics_port}:9090",
            tag, "serve", service, "--port", "50051", "--metrics-port", "9090",
            "--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]


def container_state(runner: Runner, name: str) -> tuple[str, int | None]:
    result = runner.podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name,
                           check=False, quiet=True)
    status, _, code = result.stdout.strip().partition(" ")
    return status, int(code) if code.lstrip("-").isdigit() else None


def wait_serving(runner: Runner, name: str, port: int, timeout: float) -> float:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    start = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - start < timeout:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            except grpc.RpcError:
                pass
            status, code = container_state(runner, name)
            if status not in {"running", "created", "configured"}:
                raise Failure(f"container {name} stopped before serving ({status}, exit code {code})")
            time.sleep(0.5)
    raise Failure(f"container {name}: health not SERVING after {timeout:.0f} s")


def smoke(args: argparse.Namespace, runner: Runner, built: Built, service: str) -> Check:
    check = Check(service, built.image)
    name = f"htvs-images-test-{service}"
    port, metrics_port = free_port(), free_port()
    argv = run_argv(built.tag, service, name, port, metrics_port)
    if runner.dry_run:
        runner.show(argv)
        runner.show(["podman", "exec", name, "id", "-u"])
        runner.show(["podman", "exec", name, "touch", "/probe"])
        runner.show(["podman", "stop", "-t", "10", name])
        runner.show(["podman", "rm", "-f", name])
        check.health = check.request = check.stop = "dry run"
        return check
    runner.podman("rm", "-f", name, check=False, quiet=True)
    try:
        runner.podman(*argv[1:])
        try:
            seconds = wait_serving(runner, name, port, args.health_timeout)
            check.health, check.health_s = "SERVING", round(seconds, 1)
        except Failure as error:
            check.health = str(error)
            return check
        uid = runner.podman("exec", name, "id", "-u", check=False, quiet=True)
        check.uid = uid.stdout.strip() if uid.returncode == 0 else f"exec failed: {uid.stderr.strip()}"
        probe = runner.podman("exec", name, "touch", "/probe", check=False, quiet=True)
        tmp = runner.podman("exec", name, "touch", "/tmp/probe", check=False, quiet=True)
        if probe.returncode != 0 and "Read-only file system" in probe.stderr and tmp.returncode == 0:
            check.read_only = "yes (/ read-only, /tmp writable)"
        else:
            check.read_only = f"NO: touch / rc={probe.returncode}, touch /tmp rc={tmp.returncode}"
        try:
            check.request = REQUESTS[service](port)
        except Exception as error:  # noqa: BLE001 - any failure of the request is the check's result
            check.request = f"FAILED: {type(error).__name__}: {error}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                text = response.read().decode()
            check.metrics = "ok" if "grpc" in text or "htvs" in text else "served, no htvs/grpc series"
        except OSError as error:
            check.metrics = f"FAILED: {error}"
        start = time.monotonic()
        runner.podman("stop", "-t", "10", name, check=False, quiet=True)
        check.stop_s = round(time.monotonic() - start, 2)
        status, check.exit_code = container_state(runner, name)
        within = check.stop_s <= STOP_LIMIT_S
        check.stop = (f"exit {check.exit_code} after {check.stop_s:.1f} s"
                      + ("" if within and check.exit_code == 0 else " (want exit 0 within 5 s)"))
        check.ok = (check.health == "SERVING" and check.uid == "10001" and check.read_only.startswith("yes")
                    and check.request.startswith("ok") and check.metrics == "ok"
                    and within and check.exit_code == 0)
        return check
    finally:
        if not check.ok:
            logs = runner.podman("logs", "--tail", "20", name, check=False, quiet=True)
            check.log_tail = (_text(logs.stdout) + _text(logs.stderr)).strip().splitlines()[-20:]
        runner.podman("rm", "-f", name, check=False, quiet=True)


# one request per service; each returns "ok: ..." or raises


def _channel(port: int):
    import grpc

    return grpc.insecure_channel(f"127.0.0.1:{port}")


class _Context:
    """The bits of a gRPC servicer context the in-process reference calls touch."""

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")

    def is_active(self) -> bool:
        return True

    def time_remaining(self) -> None:
        return None

    def set_code(self, code) -> None:  # pragma: no cover - only on errors
        pass

    def set_details(self, details) -> None:  # pragma: no cover
        pass


def request_composition(port: int) -> str:
    from htvs.grpc.gen import composition_pb2 as pb
    from htvs.grpc.gen import composition_pb2_grpc as pb_grpc
    from htvs.grpc.serve import build_servicer

    request = pb.PredictRequest(formulas=["Li3PS4"])
    with _channel(port) as channel:
        got = pb_grpc.CompositionServiceStub(channel).Predict(request, timeout=60).rows[0]
    want = build_servicer("composition").Predict(request, _Context()).rows[0]
    if not (math.isfinite(got.e_form_mean) and abs(got.e_form_mean - want.e_form_mean) < 1e-4
            and abs(got.band_gap_mean - want.band_gap_mean) < 1e-4):
        raise Failure(f"Li3PS4: E_f {got.e_form_mean}, gap {got.band_gap_mean}; "
                      f"on the host E_f {want.e_form_mean}, gap {want.band_gap_mean}")
    return f"ok: Predict Li3PS4 E_f {got.e_form_mean:.3f} eV/atom, gap {got.band_gap_mean:.2f} eV (= host)"


def _substitute_request():
    from htvs.grpc.gen import substitution_pb2 as pb

    prototype = pb.SitePattern(prototype_id="Li3PS4-smoke", species=[
        pb.SpeciesAmount(element="Li", amount=3), pb.SpeciesAmount(element="P", amount=1),
        pb.SpeciesAmount(element="S", amount=4)])
    config = pb.SubstitutionConfig(element_pool=["Li", "P", "As", "S", "Se"], kept_element="Li",
                                   rule=pb.SUBSTITUTION_RULE_ALL_DISTINCT)
    return pb.SubstituteRequest(prototypes=[prototype], config=config, include_substitutions=True)


def request_substitution(port: int) -> str:
    from htvs.grpc.gen import substitution_pb2_grpc as pb_grpc
    from htvs.grpc.serve import build_servicer

    request = _substitute_request()
    with _channel(port) as channel:
        got = pb_grpc.SubstitutionServiceStub(channel).Substitute(request, timeout=60)
    want = build_servicer("substitution").Substitute(request, _Context())
    got_formulas = sorted(row.formula for row in got.formulas)
    if got_formulas != sorted(row.formula for row in want.formulas) or not got_formulas:
        raise Failure(f"formulas {got_formulas[:5]}... differ from the host's {[r.formula for r in want.formulas][:5]}")
    if "Li3PS4" not in got_formulas:
        raise Failure(f"Li3PS4 missing from {got_formulas}")
    return f"ok: Substitute Li3PS4 pattern -> {len(got_formulas)} formulas, {got.n_substitutions} substitutions (= host)"


def request_structure(port: int) -> str:
    from htvs.grpc.gen import structure_pb2 as pb
    from htvs.grpc.gen import structure_pb2_grpc as pb_grpc
    from htvs.grpc.gen import substitution_pb2 as spb
    from htvs.prototypes import load_prototypes

    prototypes = load_prototypes("bundled")
    first = next(iter(prototypes.prototypes)) if hasattr(prototypes, "prototypes") else next(iter(prototypes))
    proto_id = first.id if hasattr(first, "id") else str(first)
    request = pb.MaterializeRequest(substitutions=[spb.Substitution(prototype_id=proto_id, formula="")],
                                    prototype_set="bundled", output_format=pb.STRUCTURE_FORMAT_CIF)
    with _channel(port) as channel:
        got = pb_grpc.StructureServiceStub(channel).Materialize(request, timeout=120)
    from htvs.grpc.serve import build_servicer

    want = build_servicer("structure").Materialize(request, _Context())
    if got.n_materialized != 1 or got.rows[0].formula != want.rows[0].formula or not got.rows[0].structure.cif:
        raise Failure(f"Materialize {proto_id}: {got.n_materialized} rows, formula {got.rows[0].formula!r} "
                      f"(host {want.rows[0].formula!r}), error {got.rows[0].error}")
    return f"ok: Materialize prototype {proto_id} -> {got.rows[0].formula} CIF (= host)"


def _licl_cif() -> str:
    return (ROOT / "tests" / "data" / "validation" / "LiCl.cif").read_text()


def request_conductivity(port: int) -> str:
    from htvs.grpc.gen import conductivity_pb2 as pb
    from htvs.grpc.gen import conductivity_pb2_grpc as pb_grpc
    from htvs.grpc.gen import structure_pb2 as spb
    from htvs.grpc.serve import build_servicer

    request = pb.ConductivityPredictRequest(structures=[spb.StructureData(id="LiCl", cif=_licl_cif())])
    with _channel(port) as channel:
        got = pb_grpc.ConductivityServiceStub(channel).Predict(request, timeout=120).rows[0]
    want = build_servicer("conductivity").Predict(request, _Context()).rows[0]
    if not (math.isfinite(got.log10_sigma_mean) and abs(got.log10_sigma_mean - want.log10_sigma_mean) < 1e-4):
        raise Failure(f"LiCl: log10 sigma {got.log10_sigma_mean} (host {want.log10_sigma_mean}), error {got.error}")
    return f"ok: Predict LiCl log10(sigma) {got.log10_sigma_mean:.2f}, P(superionic) {got.p_superionic:.2f} (= host)"


def request_generator(port: int) -> str:
    from htvs.grpc.gen import generator_pb2 as pb
    from htvs.grpc.gen import generator_pb2_grpc as pb_grpc

    with _channel(port) as channel:
        got = pb_grpc.StructureGeneratorServiceStub(channel).Generate(
            pb.GenerateRequest(formulas=["LiCl"], n_samples=1, seed=7), timeout=300)
    if got.n_generated != 1 or not got.rows or not got.rows[0].cif:
        raise Failure(f"Generate LiCl: {got.n_generated} generated, {got.n_errors} errors "
                      f"{[r.error.message for r in got.rows if r.HasField('error')]}")
    from pymatgen.core import Structure

    structure = Structure.from_str(got.rows[0].cif, fmt="cif")
    if structure.composition.reduced_formula != "LiCl":
        raise Failure(f"Generate LiCl gave {structure.composition.reduced_formula}")
    return f"ok: Generate LiCl -> {len(structure)}-atom CIF, {structure.volume:.0f} A^3"


def request_dft(port: int) -> str:
    from htvs.grpc.gen import dft_runner_pb2 as pb
    from htvs.grpc.gen import dft_runner_pb2_grpc as pb_grpc

    settings = pb.ValidationSettings(
        temperatures_k=[800.0, 1200.0], heat_ps=0.008, equilibrate_ps=0.008, production_ps=0.048,
        min_supercell_length_angstrom=0.0, smoothing="none", record_every_steps=2, checkpoint_every_steps=8)
    with _channel(port) as channel:
        stub = pb_grpc.DFTRunnerServiceStub(channel)
        job = stub.Submit(pb.SubmitRequest(id="LiCl", cif=_licl_cif(), settings=settings), timeout=60)
        last = list(stub.Watch(pb.WatchRequest(job_id=job.job_id), timeout=300))[-1]
        if last.state != pb.JOB_STATE_SUCCEEDED:
            detail = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=10)
            raise Failure(f"job {job.job_id} ended {pb.JobState.Name(last.state)}: {detail.error}")
        result = stub.GetResult(pb.GetResultRequest(job_id=job.job_id), timeout=10).result
    # CHGNet on LiCl (the same figures tests/test_dft_runner_service.py expects on the host)
    if not (abs(result.e_form_ev_per_atom + 2.1) < 0.15 and abs(result.phi_ox_v - 4.26) < 0.05):
        raise Failure(f"LiCl: E_f {result.e_form_ev_per_atom} (want -2.1 +- 0.15), phi_ox {result.phi_ox_v} (want 4.26)")
    return (f"ok: MD job LiCl SUCCEEDED, E_f {result.e_form_ev_per_atom:.2f} eV/atom, "
            f"phi_ox {result.phi_ox_v:.2f} V, {len(result.diffusivity)} temperatures")


REQUESTS = {
    "substitution": request_substitution,
    "composition": request_composition,
    "structure": request_structure,
    "conductivity": request_conductivity,
    "generator": request_generator,
    "dft": request_dft,
}


# ----------------------------------------------------------------------------------- report


def verdict(check: Check) -> str:
    return "PASS" if check.ok else ("-" if check.health == "dry run" else "FAIL")


def table(builds: list[Built], checks: list[Check]) -> str:
    lines = ["image   status   build     size      tag", "-" * 72]
    for b in builds:
        build_s = f"{b.build_s:.0f} s" if b.build_s is not None else "-"
        lines.append(f"{b.image:<7} {b.status:<8} {build_s:<9} {human(b.size_bytes):<9} {b.tag} {b.note}")
    lines += ["", "service       image  health        uid    read-only  request  metrics  SIGTERM             result",
              "-" * 100]
    for c in checks:
        health = f"SERVING {c.health_s:.0f} s" if c.health == "SERVING" else c.health[:12]
        read_only = "yes" if c.read_only.startswith("yes") else c.read_only[:9]
        request = "ok" if c.request.startswith("ok") else c.request[:7]
        lines.append(f"{c.service:<13} {c.image:<6} {health:<13} {c.uid[:6]:<6} {read_only:<10} {request:<8} "
                     f"{c.metrics[:7]:<8} {c.stop[:19]:<19} {verdict(c)}")
    for c in checks:
        lines.append(f"  {c.service}: {c.request}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="images_test.py",
        description="Build the htvs service images with podman (light, full; gpu only with --gpu-base) and "
                    "smoke-test each service: health SERVING, one checked request, uid 10001, read-only root, "
                    "/metrics, SIGTERM exit 0 within 5 s. Writes OUT/summary.json.",
    )
    parser.add_argument("--images", default="light,full",
                        help="comma-separated, of light, full, gpu (default: light,full)")
    parser.add_argument("--services", default="",
                        help="only these services (comma-separated; default: every service of the images)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the images built before")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "images-test-out", help="logs and summary.json")
    parser.add_argument("--base-image", default=DEFAULT_BASE,
                        help=f"PYTHON_IMAGE of the CPU builds (default: {DEFAULT_BASE}, made with debootstrap "
                             "when missing; e.g. python:3.11.14-slim-bookworm where a registry is reachable)")
    parser.add_argument("--rebuild-base", action="store_true", help="make the local base image again")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror for debootstrap")
    parser.add_argument("--gpu-base", default="", help="CUDA_IMAGE for the gpu image (required to build it)")
    parser.add_argument("--find-links", default=None,
                        help="folder of local wheels mounted into builds (default: this machine's pip find-links; "
                             "'' for none)")
    parser.add_argument("--torch-index-url", default=None,
                        help="TORCH_INDEX_URL build argument (default: https://pypi.org/simple when local wheels "
                             "are mounted, which then give the CPU torch; else the Dockerfile's)")
    parser.add_argument("--tag-prefix", default="localhost/htvs", help="images are tagged PREFIX-IMAGE:TAG")
    parser.add_argument("--tag", default="images-test")
    parser.add_argument("--nice", type=int, default=10, help="niceness of builds (default 10)")
    parser.add_argument("--build-timeout", type=float, default=3600.0, help="seconds per image build")
    parser.add_argument("--health-timeout", type=float, default=180.0, help="seconds to wait for SERVING")
    args = parser.parse_args(argv)
    args.images = [name.strip() for name in args.images.split(",") if name.strip()]
    unknown = [name for name in args.images if name not in IMAGES]
    if unknown or not args.images:
        parser.error(f"--images: unknown image(s) {unknown or args.images!r}; choose from {', '.join(IMAGES)}")
    args.services = [name.strip() for name in args.services.split(",") if name.strip()]
    bad = [name for name in args.services if name not in REQUESTS]
    if bad:
        parser.error(f"--services: unknown service(s) {bad}; choose from {', '.join(REQUESTS)}")
    if args.find_links is None:
        args.find_links = host_find_links()
    elif args.find_links and not Path(args.find_links).is_dir():
        parser.error(f"--find-links: {args.find_links!r} is not a folder")
    if args.torch_index_url is None and args.find_links:
        args.torch_index_url = "https://pypi.org/simple"
    if args.nice < 0 or args.nice > 19:
        parser.error(f"--nice: {args.nice} is outside 0..19")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.out, args.dry_run, args.nice)
    write_containers_conf(args.out)
    os.chdir(ROOT)
    summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dry_run": args.dry_run,
                     "images": [], "checks": []}
    builds: list[Built] = []
    checks: list[Check] = []
    code = 0
    lock = None
    try:
        if not args.dry_run and os.geteuid() != 0:
            raise Failure(f"run as root (podman's system storage, debootstrap); this is uid {os.geteuid()}")
        if not args.dry_run:
            # one run at a time: a second run's `podman image prune` would delete the first's build cache
            try:
                lock = open(LOCK, "w")  # noqa: SIM115 - held until the process exits
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise Failure(f"another images-test run holds {LOCK}; wait for it to finish") from error
        preflight(args, runner)
        if not args.skip_build and any(name != "gpu" for name in args.images):
            summary["base"] = make_base(args, runner)
        pip_conf = write_pip_conf(args)
        for name in args.images:
            built = build(args, runner, IMAGES[name], pip_conf)
            builds.append(built)
            summary["images"].append(asdict(built))
            if built.status == "skipped":
                continue
            for service in IMAGES[name].services:
                if args.services and service not in args.services:
                    continue
                print(f"{service} on {built.tag}: smoke test", flush=True)
                check = smoke(args, runner, built, service)
                checks.append(check)
                summary["checks"].append(asdict(check))
                print(f"{service}: {verdict(check)}: health {check.health}, uid {check.uid}, "
                      f"read-only {check.read_only}, {check.request}, metrics {check.metrics}, stop {check.stop}",
                      flush=True)
                for line in check.log_tail:
                    print(f"    | {line}")
        if not args.dry_run:
            runner.run(["podman", "image", "prune", "-f"], check=False, quiet=True)
    except Failure as error:
        print(f"error: {error}", file=sys.stderr)
        summary["error"] = str(error)
        code = 2
    summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    failed = [c.service for c in checks if not c.ok and not args.dry_run]
    summary["passed"] = code == 0 and not failed
    if failed:
        code = code or 1
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(table(builds, checks))
    print(f"\nsummary: {args.out / 'summary.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
