"""The light paths stay light: the four light services, the campaign runner and the CLI run on the
core dependencies of ``pyproject.toml``; torch and the other heavy packages come only with an
extra (``htvs[train]``, ``htvs[validate]``, ``htvs[mp]``, ``htvs[all]``), and so do the services
that need them (dft: ``validate``; generator: torch, from ``train`` or ``validate``).

The dev venv has every extra installed, so "not installed" cannot be observed here; instead a fresh
interpreter builds each light servicer (and touches what their requests read first: the element
embedding), imports the campaign runner and the CLI, and reports which modules got imported.
Those modules must belong to the distributions the core dependencies install. docker/README.md
records the same check done for real in a venv with the core only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LIGHT_SERVICES = ("substitution", "composition", "structure", "conductivity")
#: Modules no light path may import (they cost ~1 GB: torch and what sits on it).
HEAVY = ("torch", "aviary", "chgnet", "sklearn")
#: Imported when present by packages that work without them (grpc tries grpc_tools, scipy tries
#: Cython) or by the interpreter's start-up (setuptools' distutils hook).
OPPORTUNISTIC = {"grpc_tools", "Cython", "cython", "_distutils_hack"}

_PROBE = textwrap.dedent(
    """
    import json, sys
    steps = {}

    def record(step):
        steps[step] = sorted({name.split(".")[0] for name in sys.modules})

    import htvs.cli  # registers every subcommand
    record("cli")
    import htvs.campaign.remote
    import htvs.campaign.runner
    record("campaign")
    from htvs.grpc.serve import build_servicer
    for name in %r:
        build_servicer(name)
        record(name)
    # what the first composition and conductivity requests read (aviary's embedding, once)
    from htvs.composition.featurize import featurize
    from htvs.conductivity.graph import element_embedding
    featurize(["Li3PS4"])
    element_embedding()
    record("requests")
    print(json.dumps(steps))
    """
) % (LIGHT_SERVICES,)


@pytest.fixture(scope="module")
def imported() -> dict[str, list[str]]:
    """Top-level modules imported after each step, in a fresh interpreter of this venv."""
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(extra: str | None) -> list[Requirement]:
    specs = PYPROJECT["project"]["dependencies"] if extra is None else PYPROJECT["project"]["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


@cache
def _closure(roots: tuple[str, ...]) -> frozenset[str]:
    """Normalized names of ``roots`` and everything they require (installed metadata, no extras)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return frozenset(seen)


def _core_closure() -> frozenset[str]:
    return _closure(tuple(req.name for req in _requirements(None)))


@pytest.mark.parametrize("step", ("cli", "campaign", *LIGHT_SERVICES, "requests"))
def test_light_paths_import_no_heavy_module(imported: dict[str, list[str]], step: str) -> None:
    assert not set(HEAVY) & set(imported[step]), f"{step} imported {sorted(set(HEAVY) & set(imported[step]))}"


def test_light_paths_import_only_what_the_core_installs(imported: dict[str, list[str]]) -> None:
    """Every third-party module the light paths imported comes from a distribution that the core
    dependencies (and what they require) install."""
    owners = metadata.packages_distributions()
    core = _core_closure()
    outside: dict[str, list[str]] = {}
    for module in sorted(set().union(*imported.values())):
        if module in sys.stdlib_module_names or module == "htvs" or module in OPPORTUNISTIC or module not in owners:
            continue  # stdlib, this package, or a C helper no distribution lists as top level
        dists = [_norm(d) for d in owners[module]]
        if not set(dists) & core:
            outside[module] = dists
    assert outside == {}, f"imported by a light path but not installed by the core: {outside}"


def test_the_generator_service_needs_torch_which_its_extras_install() -> None:
    """``htvs serve generator`` is not light: it samples with torch, which ``train`` and ``validate``
    (hence ``all``) install, so the chart runs it on the full or the GPU image. Importing its
    servicer module loads no torch (the light paths that name every service stay light); building
    the servicer does."""
    probe = textwrap.dedent(
        """
        import json, sys
        import htvs.grpc.generator_service
        imported = "torch" in sys.modules
        from htvs.grpc.serve import build_servicer
        build_servicer("generator", generator_device="cpu")
        print(json.dumps([imported, "torch" in sys.modules]))
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [False, True]
    assert "generator" not in LIGHT_SERVICES
    for extra in ("train", "validate"):
        assert "torch" in _closure(tuple(r.name for r in _requirements(extra))), extra
    everything = Requirement(PYPROJECT["project"]["optional-dependencies"]["all"][0])
    assert {"train", "validate"} <= everything.extras


def test_core_does_not_pull_heavy_distributions() -> None:
    heavy = {"torch", "aviary-models", "chgnet", "scikit-learn", "onnx", "ase", "mp-api", "grpcio-tools"}
    assert not heavy & {_norm(r.name) for r in _requirements(None)}
    assert not heavy & _core_closure(), "a core dependency requires a heavy package"


def test_extras_hold_the_heavy_packages_and_all_is_everything() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    names = {extra: {_norm(Requirement(spec).name) for spec in specs} for extra, specs in extras.items()}
    assert {"torch", "aviary-models", "onnx", "scikit-learn"} <= names["train"]
    assert {"chgnet", "ase", "pymatgen-analysis-diffusion"} <= names["validate"]
    assert names["mp"] == {"mp-api"}
    assert names["codegen"] == {"grpcio-tools"}
    (everything,) = [Requirement(spec) for spec in extras["all"]]
    assert everything.name == "htvs" and everything.extras == {"train", "validate", "mp"}
    # every extra's package appears once; the bounds stay where they are
    listed = [_norm(Requirement(spec).name) for extra in ("train", "validate", "mp", "codegen")
              for spec in extras[extra]]
    listed += [_norm(r.name) for r in _requirements(None)]
    assert len(listed) == len(set(listed)), listed


def test_module_to_extra_map_matches_pyproject() -> None:
    """htvs.extras names the extra a missing module comes with; that extra must list the
    distribution the module belongs to (or a package requiring it)."""
    from htvs.extras import EXTRA_OF_MODULE

    owners = metadata.packages_distributions()
    for module, extra in EXTRA_OF_MODULE.items():
        dists = {_norm(d) for d in owners[module.split(".")[0]]}
        if "." in module:  # a namespace package (pymatgen.analysis.diffusion): its own distribution
            dists = {_norm(module.replace(".analysis.", "-analysis-"))}
        provided = _closure(tuple(r.name for r in _requirements(extra)))
        assert dists & provided, f"{module} ({dists}) is not installed by htvs[{extra}]"


def test_make_install_installs_every_extra() -> None:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"pip install --quiet -e '\.\[([\w,]+)\]'", makefile)
    assert match, "make install: pip install -e '.[...]'"
    assert {"all", "codegen", "test"} <= set(match.group(1).split(","))


def test_bundled_embedding_is_aviarys() -> None:
    """The element embedding shipped with htvs (serving needs no aviary) is aviary's own table."""
    aviary = pytest.importorskip("aviary")
    from importlib import resources

    from htvs.datasets import element_embedding_table

    path = resources.files(aviary) / "embeddings" / "element" / "matscholar200.json"
    assert element_embedding_table("matscholar200") == json.loads(path.read_text(encoding="utf-8"))


def test_missing_extra_is_one_clear_line() -> None:
    from htvs.errors import ModelNotReady
    from htvs.extras import extra_for, require_extra

    with pytest.raises(ModelNotReady, match=r"pip install 'htvs\[validate\]'"):
        require_extra("htvs_no_such_module", "validate", "the test")
    assert extra_for(ModuleNotFoundError("x", name="torch")) == "train"
    assert extra_for(ModuleNotFoundError("x", name="pymatgen.analysis.diffusion.analyzer")) == "validate"
    assert extra_for(ModuleNotFoundError("x", name="pymatgen")) is None
