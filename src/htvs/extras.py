"""The optional extras of the package (``pyproject.toml``) and the error for a missing one.

The core installs what the four light gRPC services, the CLI, the campaign runner and the store
need; torch and the other heavy packages come with an extra::

    pip install 'htvs[train]'      # training, ONNX export, the structure generator (torch)
    pip install 'htvs[validate]'   # stage 7: CHGNet through ASE (htvs validate, htvs serve dft)
    pip install 'htvs[mp]'         # the live Materials Project prototype source
    pip install 'htvs[all]'        # all of the above
"""

from __future__ import annotations

import importlib
from types import ModuleType

from htvs.errors import ModelNotReady

#: Module -> the extra that installs it (``tests/test_service_dependencies.py`` checks
#: this against ``pyproject.toml``).
EXTRA_OF_MODULE = {
    "torch": "train",
    "aviary": "train",
    "onnx": "train",
    "sklearn": "train",
    "chgnet": "validate",
    "ase": "validate",
    "pymatgen.analysis.diffusion": "validate",
    "mp_api": "mp",
    "grpc_tools": "codegen",
}


def missing_extra_message(missing: str, extra: str, purpose: str | None = None) -> str:
    """One line naming the missing module and the extra to install."""
    what = f"{purpose} needs" if purpose else "this needs"
    return f"{what} {missing}, which is not installed: pip install 'htvs[{extra}]'"


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """``module`` imported, or ModelNotReady naming the extra when it (or a module it imports,
    torch for chgnet) is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ModelNotReady(missing_extra_message(exc.name or module, extra, purpose)) from exc


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the module ``exc`` misses (None: not an optional module)."""
    name = exc.name or ""
    for module, extra in EXTRA_OF_MODULE.items():
        if name == module or name.startswith(module + "."):
            return extra
    return None
