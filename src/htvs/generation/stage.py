"""Stage 5 of the funnel: generate candidate crystal structures for shortlisted compositions.

:func:`generate_structures` is the pure stage function (the CLI calls it; gRPC/Argo wiring is not
written yet). The model is passed in: :func:`load_generator` reads the shipped weights
(``torch.load(weights_only=True)``) and model card from ``htvs/models/generator``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from htvs.errors import InvalidInput, ModelNotReady
from htvs.generation.diffusion import DiffusionSchedule
from htvs.generation.model import CSPDenoiser, DenoiserConfig

WEIGHTS = "weights.pt"
CARD = "model_card.json"


@dataclass(frozen=True)
class GenerationConfig:
    """Settings of stage 5.

    Attributes:
        n_samples: candidate structures per formula, 1..max_samples.
        max_atoms: largest cell generated (atoms); larger formulas are refused.
        seed: sampler seed (same inputs and seed -> same structures).
        step_lr: Langevin corrector step scale.
    """

    n_samples: int = 1
    max_atoms: int = 20
    max_samples: int = 100
    seed: int = 0
    step_lr: float = 1e-5
    threads: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.max_samples, bool) or self.max_samples < 1:
            raise InvalidInput(f"max_samples must be >= 1, got {self.max_samples}")
        if isinstance(self.n_samples, bool) or not 1 <= self.n_samples <= self.max_samples:
            raise InvalidInput(f"n_samples must be between 1 and {self.max_samples}, got {self.n_samples}")
        if self.max_atoms < 1:
            raise InvalidInput(f"max_atoms must be >= 1, got {self.max_atoms}")
        if not self.step_lr >= 0:
            raise InvalidInput(f"step_lr must be >= 0, got {self.step_lr}")


@dataclass(frozen=True)
class GeneratedStructure:
    """One candidate: ``cif`` text of a P1 cell with the formula's atoms; volume in Å^3."""

    formula: str
    sample: int
    cif: str
    num_atoms: int
    volume_a3: float

    def summary(self) -> str:
        return f"{self.num_atoms} atoms, V = {self.volume_a3:.2f} Å^3"


@dataclass(frozen=True)
class GenerationError:
    """A formula (or one of its samples) that was not generated, and why."""

    formula: str
    error: str


@dataclass(frozen=True)
class Generator:
    """A loaded generator: EMA denoiser, schedule, model card and the trained atomic numbers."""

    model: CSPDenoiser
    schedule: DiffusionSchedule
    card: dict
    elements: frozenset[int]


def default_model_dir() -> Path:
    return Path(str(resources.files("htvs") / "models" / "generator"))


def _sha256(path: Path) -> str:
    from htvs.composition.onnx_export import sha256_of  # the project's one file-hash helper

    return sha256_of(path)


def load_generator(directory: str | Path | None = None) -> Generator:
    """Load ``weights.pt`` + ``model_card.json`` (default: the shipped model); checks the hash."""
    folder = Path(directory) if directory is not None else default_model_dir()
    if not (folder / CARD).exists() or not (folder / WEIGHTS).exists():
        raise ModelNotReady(f"no generator in {folder} (needs {WEIGHTS} and {CARD}); "
                            "train and export one with `htvs train generator` / `generator-export`")
    card = json.loads((folder / CARD).read_text())
    if card.get("sha256") != _sha256(folder / WEIGHTS):
        raise ModelNotReady(f"{folder / WEIGHTS} does not match the sha256 of its model card")
    model = CSPDenoiser(DenoiserConfig(**card["model"]))
    state = torch.load(folder / WEIGHTS, weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    schedule = DiffusionSchedule(**{k: card["schedule"][k] for k in ("timesteps", "sigma_begin", "sigma_end")})
    return Generator(model, schedule, card, frozenset(card["elements"]))


def export_generator(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the run's EMA weights and a model card (data, split, steps, metrics, hash)."""
    from pymatgen.core import Element

    from htvs.generation.evaluate import METRICS
    from htvs.generation.train import load_run_model

    run = Path(run_dir)
    model, schedule, settings, elements = load_run_model(run)
    metrics = json.loads((run / METRICS).read_text()) if (run / METRICS).exists() else None
    folder = Path(out_dir) if out_dir is not None else default_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / WEIGHTS)
    card = {
        "name": "htvs stage-5 generator (DiffCSP-style joint lattice/coordinate diffusion, CSPNet-style denoiser)",
        "task": "crystal structure prediction at fixed composition",
        "data": "perov_5 (Castelli et al. perovskites, 5 atoms per cell) from the CDVAE/DiffCSP benchmark, "
                "CDVAE repository (MIT)",
        "split": "trained on perov_5 val (3,787 crystals) because the train split is not available here; "
                 "evaluated on a fixed-seed subset of perov_5 test",
        "steps": settings["step"],
        "train_seconds": round(settings["seconds"], 1),
        "training": {k: settings[k] for k in ("batch_size", "learning_rate", "warmup_steps", "grad_clip",
                                              "ema_decay", "seed")},
        "model": settings["model"],
        "schedule": schedule.to_dict(),
        "elements": elements,
        "element_symbols": [Element.from_Z(z).symbol for z in elements],
        "metrics": metrics,
        "caveat": "small CPU-trained model; only elements of perov_5 have trained embeddings; "
                  "never trained on Li compounds",
        "sha256": _sha256(folder / WEIGHTS),
    }
    (folder / CARD).write_text(json.dumps(_finite_json(card), indent=1, allow_nan=False) + "\n")
    return folder


def _finite_json(value):
    """``value`` with NaN/infinite floats replaced by None (an unmatched RMSE is NaN)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_json(item) for item in value]
    return value


def _composition_atoms(formula: str, generator: Generator, config: GenerationConfig) -> list[int]:
    """Atomic numbers of the cell of ``formula`` (counts as written), or InvalidInput saying why."""
    from htvs.formula import parse_composition

    composition = parse_composition(formula)
    atoms: list[int] = []
    for element, amount in composition.items():
        if abs(amount - round(amount)) > 1e-6:
            raise InvalidInput(f"formula {formula!r} has a non-integer amount of {element}: {amount}")
        if element.Z not in generator.elements:
            raise InvalidInput(f"element {element.symbol} of {formula!r} has no trained embedding in the "
                               f"generator (trained elements: perov_5's {len(generator.elements)})")
        atoms += [element.Z] * int(round(amount))
    if len(atoms) > config.max_atoms:
        raise InvalidInput(f"formula {formula!r} has {len(atoms)} atoms, more than max_atoms={config.max_atoms}")
    return atoms


def generate_structures(
    formulas: list[str], generator: Generator, config: GenerationConfig
) -> list[GeneratedStructure | GenerationError]:
    """Stage 5: ``config.n_samples`` candidate structures per formula (rows in formula, sample order).

    A bad formula gives one :class:`GenerationError` row and the others are generated; so does a
    sample whose lattice degenerated (non-finite or zero volume).
    """
    from pymatgen.io.cif import CifWriter

    from htvs.generation.sampling import sample_crystals, to_structures

    torch.set_num_threads(config.threads)
    plan: list[tuple[str, list[int]] | GenerationError] = []
    for formula in formulas:
        try:
            plan.append((str(formula).strip(), _composition_atoms(formula, generator, config)))
        except InvalidInput as exc:
            plan.append(GenerationError(str(formula), str(exc)))
    jobs = [item for item in plan if not isinstance(item, GenerationError)]
    structures: list = []
    if jobs:
        atoms = [z for _, zs in jobs for _ in range(config.n_samples) for z in zs]
        counts = [len(zs) for _, zs in jobs for _ in range(config.n_samples)]
        numbers = torch.tensor(atoms, dtype=torch.long)
        result = sample_crystals(generator.model, generator.schedule, numbers, torch.tensor(counts),
                                 torch.Generator().manual_seed(config.seed), step_lr=config.step_lr)
        structures = to_structures(result, numbers)
    rows: list[GeneratedStructure | GenerationError] = []
    cursor = 0
    for item in plan:
        if isinstance(item, GenerationError):
            rows.append(item)
            continue
        formula, _ = item
        for sample in range(config.n_samples):
            structure = structures[cursor]
            cursor += 1
            if structure is None or not structure.volume > 0:
                rows.append(GenerationError(formula, f"sample {sample} of {formula!r} degenerated (no finite cell)"))
                continue
            rows.append(GeneratedStructure(formula, sample, str(CifWriter(structure)), len(structure),
                                           float(structure.volume)))
    return rows
