"""What a validation backend provides, and how one is chosen by name.

* ``mlip`` (default): CHGNet through ASE (:class:`htvs.validation.mlip.MlipBackend`).
* ``vasp``: Materials-Project-compatible VASP inputs run by a configured VASP command
  (:class:`htvs.validation.vasp.VaspBackend`); refused with ModelNotReady when no VASP
  command or POTCAR directory is configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pymatgen.core import Structure

from htvs.errors import InvalidInput
from htvs.validation.config import BACKENDS, MDConfig, RelaxConfig
from htvs.validation.md import ChunkCallback
from htvs.validation.records import MDTrajectory, RelaxResult, StopHook


class Backend(Protocol):
    """Relaxation and MD of one structure."""

    #: ``"mlip"`` or ``"vasp"``.
    name: str

    def relax(
        self, structure: Structure, config: RelaxConfig, *, workdir: Path | None = None, should_stop: StopHook = ...
    ) -> RelaxResult:
        """Relax cell and positions; the energy on the MP2020-compatible scale."""
        ...

    def run_md(
        self,
        structure: Structure,
        temperature_k: float,
        config: MDConfig,
        *,
        seed: int | None = None,
        checkpoint: Path | None = None,
        on_chunk: ChunkCallback | None = None,
        should_stop: StopHook = ...,
    ) -> MDTrajectory:
        """Heat, equilibrate and produce at ``temperature_k``; resume from ``checkpoint``."""
        ...


def load_backend(name: str, *, device: str | None = None, threads: int | None = 1) -> Backend:
    """The backend called ``name`` with its heavy resources loaded.

    Args:
        name: ``"mlip"`` or ``"vasp"``.
        device: torch device of the MLIP (None: CUDA when present).
        threads: torch CPU threads of the MLIP, process-wide (see ``MlipBackend``).

    Raises:
        InvalidInput: unknown name.
        ModelNotReady: CHGNet cannot be loaded, or VASP is not configured.
    """
    if name == "mlip":
        from htvs.validation.mlip import MlipBackend

        return MlipBackend(device=device, threads=threads)
    if name == "vasp":
        from htvs.validation.vasp import VaspBackend

        return VaspBackend.from_env()
    raise InvalidInput(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
