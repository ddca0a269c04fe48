"""The ``mlip`` backend: CHGNet 0.3.0 through ASE (CPU here, CUDA when present).

The weights ship inside the ``chgnet`` wheel (``chgnet/pretrained/0.3.0``); they are read with
``torch.load(weights_only=True)`` (plain tensors and dicts), never unpickled, and nothing is
downloaded. chgnet prints banners on stdout while loading and per calculator: they are
dropped so that ``--json`` output stays clean. Heavy imports (torch, chgnet, ase) happen on
first use.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from htvs.errors import InvalidInput, ModelNotReady
from htvs.validation.config import MDConfig, RelaxConfig
from htvs.validation.md import ChunkCallback, run_md
from htvs.validation.records import MDTrajectory, RelaxResult, StopHook, ValidationCancelled, never_stop

MODEL_VERSION = "0.3.0"
_WEIGHTS = "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"


def weights_path() -> Path:
    """The CHGNet 0.3.0 weights inside the installed ``chgnet`` package."""
    from htvs.extras import require_extra

    chgnet = require_extra("chgnet", "validate", "the mlip backend (CHGNet)")
    path = Path(chgnet.__file__).resolve().parent / _WEIGHTS
    if not path.is_file():
        raise ModelNotReady(f"CHGNet {MODEL_VERSION} weights not found at {path}; reinstall chgnet")
    return path


def resolve_device(device: str | None) -> str:
    """``device`` or, when None, ``"cuda"`` if torch sees a GPU else ``"cpu"``.

    Raises:
        InvalidInput: not one of cpu, cuda, cuda:N, mps (the names ``ValidationConfig`` takes).
        ModelNotReady: a CUDA device asked for where torch sees none.
    """
    if device is not None and not _known_device(device):
        raise InvalidInput(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    import torch

    if device is not None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelNotReady(f"device {device!r} asked for, but torch sees no CUDA device")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _known_device(device: object) -> bool:
    if not isinstance(device, str):
        return False
    if device.startswith("cuda:"):
        return device[5:].isdigit()
    return device in ("cpu", "cuda", "mps")


def load_chgnet(device: str | None = None):
    """The pretrained CHGNet 0.3.0 model on ``device`` (see :func:`resolve_device`)."""
    import torch

    path = weights_path()
    # chgnet 0.4 warns on every call about a scalar taken from a tensor that needs grad
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad", module="chgnet")
    with contextlib.redirect_stdout(io.StringIO()):
        from chgnet.model import CHGNet

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = CHGNet.from_dict(state["model"], mlp_out_bias=False, version=MODEL_VERSION)
        except Exception as exc:  # noqa: BLE001 - torch/chgnet raise many kinds
            raise ModelNotReady(f"cannot load CHGNet weights {path}: {exc}") from exc
    model.eval()
    return model.to(resolve_device(device))


_SHARED: dict[str, object] = {}
_SHARED_LOCK = threading.Lock()


def shared_chgnet(device: str | None = None):
    """One CHGNet per device and process, loaded on first use (inference only, thread-safe)."""
    resolved = resolve_device(device)
    with _SHARED_LOCK:
        if resolved not in _SHARED:
            _SHARED[resolved] = load_chgnet(resolved)
        return _SHARED[resolved]


class MlipBackend:
    """Relaxation and MD with CHGNet (one model, loaded once, shared by the calls).

    Args:
        model: a loaded CHGNet (default: the process's :func:`shared_chgnet` on ``device``).
        device: torch device when ``model`` is None.
        threads: torch intra-op CPU threads, set for the whole process (None: torch's
            default). The default 1 is the fast choice for MD cells of up to a few hundred
            atoms on a shared machine: on this 2-core machine under load, 8-atom LiCl took
            0.08 s/step with 1 thread and 0.9 s/step with 2 (threads waiting on each other).
    """

    name = "mlip"

    def __init__(self, model=None, device: str | None = None, threads: int | None = 1) -> None:
        from htvs.extras import require_extra

        require_extra("chgnet", "validate", "the mlip backend (CHGNet)")  # torch comes with it
        if threads is not None:
            import torch

            if threads < 1:
                raise InvalidInput(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.model = model if model is not None else shared_chgnet(device)

    def calculator(self):
        """A fresh ASE calculator on the shared model."""
        with contextlib.redirect_stdout(io.StringIO()):
            from chgnet.model.dynamics import CHGNetCalculator

            return CHGNetCalculator(model=self.model, use_device=str(next(self.model.parameters()).device))

    def relax(
        self,
        structure: Structure,
        config: RelaxConfig,
        *,
        workdir: Path | None = None,
        should_stop: StopHook = never_stop,
    ) -> RelaxResult:
        """Relax positions (and the cell, ``FrechetCellFilter``) with FIRE to ``fmax``."""
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE
        from pymatgen.io.ase import AseAtomsAdaptor

        if should_stop():
            raise ValidationCancelled("stopped before the relaxation")
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = self.calculator()
        target = FrechetCellFilter(atoms) if config.relax_cell else atoms
        optimizer = FIRE(target, logfile=None)
        with warnings.catch_warnings():
            # the cell filter's matrix logarithm warns at errors of ~1e-13 on every step: noise
            warnings.filterwarnings("ignore", message="logm result may be inaccurate", category=RuntimeWarning)
            converged = bool(optimizer.run(fmax=config.fmax_ev_per_angstrom, steps=config.max_steps))
        forces = target.get_forces()
        max_force = float(np.sqrt((forces**2).sum(axis=1)).max()) if len(forces) else 0.0
        # plain species and coordinates: no calculator results (float32 magmoms...) as site properties
        relaxed = Structure(atoms.cell.array.copy(), list(atoms.get_chemical_symbols()), atoms.get_positions(),
                            coords_are_cartesian=True)
        return RelaxResult(
            structure=relaxed,
            energy_ev=float(atoms.get_potential_energy()),
            converged=converged,
            n_steps=int(optimizer.nsteps),
            max_force_ev_per_angstrom=max_force,
        )

    def run_md(
        self,
        structure: Structure,
        temperature_k: float,
        config: MDConfig,
        *,
        seed: int | None = None,
        checkpoint: Path | None = None,
        on_chunk: ChunkCallback | None = None,
        should_stop: StopHook = never_stop,
    ) -> MDTrajectory:
        """The MD protocol at ``temperature_k`` (see :func:`htvs.validation.md.run_md`)."""
        return run_md(
            structure,
            self.calculator(),
            temperature_k,
            config,
            seed=seed,
            checkpoint=checkpoint,
            on_chunk=on_chunk,
            should_stop=should_stop,
        )
