"""Stage 5 of the funnel: generate candidate crystal structures for shortlisted compositions.

:func:`generate_structures` is the pure stage function (``htvs generate`` and the campaign's
``generate`` step, :func:`htvs.campaign.stages.run_generate`, call it). The model is passed in:
:func:`load_generator` reads the shipped weights (``torch.load(weights_only=True)``) and model
card from ``htvs/models/generator``.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from htvs.errors import InvalidInput, RowError, shown
from htvs.ranges import Range
from htvs.generation.diffusion import DiffusionSchedule
from htvs.generation.model import CSPDenoiser, DenoiserConfig
from htvs.model_cards import CARD_NAME, read_model_card, sha256_of

WEIGHTS = "weights.pt"
#: Largest sampler seed (torch takes 64-bit seeds; this one is exact as a float, so that the
#: range check is exact too).
MAX_SEED = 2**53 - 1


@dataclass(frozen=True)
class GenerationConfig:
    """Settings of stage 5.

    Attributes:
        n_samples: candidate structures per formula, 1..max_samples.
        max_atoms: largest cell generated (atoms); larger formulas are refused.
        max_samples: largest ``n_samples`` accepted.
        seed: sampler seed, 0..:data:`MAX_SEED` (same inputs and seed -> same structures).
        step_lr: Langevin corrector step scale, 0..1 (0: predictor only).
        threads: torch intra-op threads.

    Raises:
        InvalidInput: a setting out of its range; the message names it, its value and the range
            (e.g. ``n_samples must be an integer between 1 and 100, got 101``).
    """

    n_samples: int = 1
    max_atoms: int = 20
    max_samples: int = 100
    seed: int = 0
    step_lr: float = 1e-5
    threads: int = 1

    def __post_init__(self) -> None:
        Range(1, 1_000_000, integer=True).check("max_samples", self.max_samples)
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, numbers.Integral) or not (
            1 <= self.n_samples <= self.max_samples
        ):
            raise InvalidInput(f"n_samples must be an integer between 1 and {self.max_samples}, "
                               f"got {shown(self.n_samples)}")
        Range(1, 1_000_000, integer=True).check("max_atoms", self.max_atoms)
        Range(0, MAX_SEED, integer=True).check("seed", self.seed)
        Range(0.0, 1.0).check("step_lr", self.step_lr)
        Range(1, 1024, integer=True).check("threads", self.threads)


@dataclass(frozen=True)
class GeneratedStructure:
    """One candidate: ``cif`` text of a P1 cell with the formula's atoms; volume in Å^3.

    ``structure`` is the sampled pymatgen Structure the CIF was written from (None when the row
    was built from stored fields): checks that need the exact sample read it, since a CIF reader
    merges atoms that nearly coincide.
    """

    formula: str
    sample: int
    cif: str
    num_atoms: int
    volume_a3: float
    structure: Any = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        return f"{self.num_atoms} atoms, V = {self.volume_a3:.2f} Å^3"


@dataclass(frozen=True)
class Generator:
    """A loaded generator: EMA denoiser, schedule, model card and the trained atomic numbers."""

    model: CSPDenoiser
    schedule: DiffusionSchedule
    card: dict
    elements: frozenset[int]


def default_model_dir() -> Path:
    return Path(str(resources.files("htvs") / "models" / "generator"))


def load_generator(directory: str | Path | None = None) -> Generator:
    """Load ``weights.pt`` + ``model_card.json`` (default: the shipped model); checks the hash.

    Raises:
        ModelNotReady: the card or the weights are missing, or the weights' sha256 is not the
            card's (:func:`htvs.model_cards.read_model_card`).
    """
    checked = read_model_card(
        directory if directory is not None else default_model_dir(),
        kind="generator",
        members=(),
        files={WEIGHTS: "sha256"},
        hint="train and export one with `htvs train generator` / `generator-export`",
    )
    folder, card = checked.folder, checked.data
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
        **_card_data(settings["data"]),
        "steps": settings["step"],
        "train_seconds": round(settings["seconds"], 1),
        "training": {k: settings[k] for k in ("batch_size", "learning_rate", "warmup_steps", "grad_clip",
                                              "ema_decay", "seed")},
        "model": settings["model"],
        "schedule": schedule.to_dict(),
        "elements": elements,
        "element_symbols": [Element.from_Z(z).symbol for z in elements],
        "metrics": metrics,
        "hardware": "CPU only (the trainer has no GPU path); no GPU time used",
        "sha256": sha256_of(folder / WEIGHTS),
    }
    (folder / CARD_NAME).write_text(json.dumps(_finite_json(card), indent=1, allow_nan=False) + "\n")
    return folder


def _card_data(data: str) -> dict[str, str]:
    """The model card's data, split and caveat for a run's training-set description."""
    from htvs.generation.mp_data import SOURCE
    from htvs.generation.train import DATASETS

    if data == DATASETS["mp20"]:
        return {
            "data": f"MP-20-like: {SOURCE}",
            "split": "60/20/20 by reduced formula with seed 0 (all polymorphs of a composition in one part): "
                     "trained on the train part (11,739 crystals), evaluated on fixed-seed subsets of the test "
                     "part (3,964) and of its Li-containing ternary and quaternary crystals (313); unlike MP-20 "
                     "(Xie et al., ICLR 2022) the 2018 snapshot and no E_hull cut",
            "caveat": "small model trained on 2 CPU cores for far fewer steps than DiffCSP's 1,000 epochs on a GPU; "
                      "elements absent from the training part have no trained embedding and are refused",
        }
    return {
        "data": "perov_5 (Castelli et al. perovskites, 5 atoms per cell) from the CDVAE/DiffCSP benchmark, "
                "CDVAE repository (MIT)",
        "split": "trained on perov_5 val (3,787 crystals) because the train split is not available here; "
                 "evaluated on a fixed-seed subset of perov_5 test",
        "caveat": "small CPU-trained model; only elements of perov_5 have trained embeddings; "
                  "never trained on Li compounds",
    }


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
            raise InvalidInput(f"element {element.symbol} of {formula!r} has no trained embedding in the generator, "
                               f"which knows {len(generator.elements)} elements: {known_symbols(generator)}")
        atoms += [element.Z] * int(round(amount))
    if len(atoms) > config.max_atoms:
        raise InvalidInput(f"formula {formula!r} has {len(atoms)} atoms in its cell, more than the limit "
                           f"max_atoms={config.max_atoms}")
    return atoms


def known_symbols(generator: Generator) -> str:
    """The symbols of the elements ``generator`` has trained embeddings for, by atomic number
    (``"Li, Be, B, ..."``)."""
    from pymatgen.core import Element

    return ", ".join(Element.from_Z(z).symbol for z in sorted(generator.elements))


def generate_structures(
    formulas: list[str], generator: Generator, config: GenerationConfig
) -> list[GeneratedStructure | RowError]:
    """Stage 5: ``config.n_samples`` candidate structures per formula (rows in formula, sample order).

    A bad formula gives one :class:`~htvs.errors.RowError` row (``index``: the formula's position,
    ``value``: the formula) and the others are generated; so does a sample whose lattice
    degenerated (non-finite or zero volume; kind ``"StageFailed"``).
    """
    from pymatgen.io.cif import CifWriter

    from htvs.generation.sampling import sample_crystals, to_structures

    torch.set_num_threads(config.threads)
    plan: list[tuple[int, str, list[int]] | RowError] = []
    for index, formula in enumerate(formulas):
        try:
            plan.append((index, str(formula).strip(), _composition_atoms(formula, generator, config)))
        except InvalidInput as exc:
            plan.append(RowError.of(index, formula, exc))
    jobs = [item for item in plan if not isinstance(item, RowError)]
    structures: list = []
    if jobs:
        atoms = [z for _, _, zs in jobs for _ in range(config.n_samples) for z in zs]
        counts = [len(zs) for _, _, zs in jobs for _ in range(config.n_samples)]
        numbers = torch.tensor(atoms, dtype=torch.long)
        result = sample_crystals(generator.model, generator.schedule, numbers, torch.tensor(counts),
                                 torch.Generator().manual_seed(config.seed), step_lr=config.step_lr)
        structures = to_structures(result, numbers)
    rows: list[GeneratedStructure | RowError] = []
    cursor = 0
    for item in plan:
        if isinstance(item, RowError):
            rows.append(item)
            continue
        index, formula, _ = item
        for sample in range(config.n_samples):
            structure = structures[cursor]
            cursor += 1
            if structure is None or not structure.volume > 0:
                rows.append(RowError(index, formula, f"sample {sample} of {formula!r} degenerated (no finite cell)",
                                     "StageFailed"))
                continue
            rows.append(GeneratedStructure(formula, sample, str(CifWriter(structure)), len(structure),
                                           float(structure.volume), structure))
    return rows
