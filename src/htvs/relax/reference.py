"""A convex hull on one energy scale: CHGNet energies of the competing MP phases.

The hull of a chemical system (e.g. Li-P-S) is built from every structure of the 2018 MP snapshot
(:func:`htvs.datasets.load_mp_structures`) whose elements are a subset of the system, elemental
phases included, each given its CHGNet energy per atom; the lowest per composition enters a
pymatgen ``PhaseDiagram``. A candidate's E_f and E_hull then come from its own CHGNet energy
against those phases: one model, one scale (no mixing of CHGNet totals with MP formation
energies computed with other corrections).

Reference energies: static CHGNet energies of the MP-relaxed structures (``mode="static"``,
the default) or of CHGNet-relaxed ones (``mode="relaxed"``). Measured on this CPU on 16 random
snapshot structures of <= 8 sites (``benchmarks/bench_relax_hull.py --reference-sample``):
static - relaxed energy median 0.07 meV/atom, mean 0.9, max 8.7 meV/atom, while relaxing took
5.6x the time of the static evaluation (32 s vs 5.7 s). CHGNet was trained on MP relaxation
trajectories, so MP structures already sit near its minima; the few meV/atom are well below
CHGNet's own ~30 meV/atom error, and a chemical system has tens to hundreds of phases. Static
references are the default; a relaxed candidate can then sit a few meV/atom below the static
reference of the same structure (slightly negative E_hull).

Energies are cached on disk, one JSON file per chemical system, under
``cache_dir/<model key>/<mode>/`` where the model key holds the CHGNet version and the sha256 of
its weights file; files are written atomically, so concurrent writers are safe. A phase already
computed for a subsystem is reused.

The snapshot has no elemental structure of 15 elements (Ar, Br, Ce, Eu, F, H, I, Kr, Ne, Pu, Rh,
S, Se, Th, Xe); for those, and only those, the
elemental phase is the MP 2023 ground-state entry's energy (DFT, MP2020 scale — the scale CHGNet
was trained on, ~0.03 eV/atom MAE), id ``mp2023-dft:<element>``. This shifts only facets that
touch the pure element.

Refused (per structure, :class:`~htvs.errors.InvalidInput` naming the value): more than
:data:`MAX_ELEMENTS` elements, an element absent from the snapshot (or with neither an
elemental structure nor an MP reference energy).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pymatgen.core import Composition, Structure

from htvs.errors import InvalidInput

#: Most elements of a chemical system whose hull is built (2^6 - 1 subsystems).
MAX_ELEMENTS = 6
#: Reference energy modes.
MODES = ("static", "relaxed")
#: Material id prefix of an elemental phase taken from the MP 2023 reference energies.
DFT_ELEMENT_PREFIX = "mp2023-dft:"
#: Default cache folder of the reference energies.
DEFAULT_CACHE_DIR = Path("~/.cache/htvs/chgnet-hull")


@dataclass(frozen=True)
class PhaseEnergy:
    """One competing phase: an MP structure with its CHGNet energy.

    Attributes:
        material_id: the MP id.
        formula: pymatgen reduced formula.
        n_atoms: atoms in the cell.
        energy_per_atom_ev: CHGNet energy per atom, eV/atom (MP2020-compatible scale).
    """

    material_id: str
    formula: str
    n_atoms: int
    energy_per_atom_ev: float


@dataclass(frozen=True)
class StabilityOnScale:
    """E_f and E_hull of a relaxed structure against the CHGNet hull of its chemical system.

    Attributes:
        formula: pymatgen reduced formula.
        energy_per_atom_ev: the structure's CHGNet energy, eV/atom.
        e_form_ev_per_atom: formation energy vs the CHGNet elemental phases, eV/atom.
        e_above_hull_ev_per_atom: energy above the CHGNet hull, eV/atom (negative: below it).
        decomposition: ``(reduced formula, atomic fraction)`` of the hull phases at this
            composition, largest first.
        chemsys: the chemical system, e.g. ``"Li-P-S"``.
    """

    formula: str
    energy_per_atom_ev: float
    e_form_ev_per_atom: float
    e_above_hull_ev_per_atom: float
    decomposition: tuple[tuple[str, float], ...]
    chemsys: str

    def to_dict(self) -> dict:
        return {"formula": self.formula, "chemsys": self.chemsys, "energy_per_atom_eV": self.energy_per_atom_ev,
                "e_form_eV_per_atom": self.e_form_ev_per_atom, "e_above_hull_eV_per_atom": self.e_above_hull_ev_per_atom,
                "decomposition": [[f, x] for f, x in self.decomposition]}


@functools.cache
def model_key() -> str:
    """``chgnet-<version>-<first 12 hex of the weights' sha256>``: the cache's model part."""
    from htvs.validation.mlip import MODEL_VERSION, weights_path

    digest = hashlib.sha256(weights_path().read_bytes()).hexdigest()[:12]
    return f"chgnet-{MODEL_VERSION}-{digest}"


def chemsys_of(elements: Iterable[str]) -> str:
    """``"Li-P-S"``-style name of a set of element symbols (sorted alphabetically)."""
    return "-".join(sorted(set(elements)))


class _SnapshotIndex:
    """The MP snapshot's records grouped by element set (built once, on first use)."""

    def __init__(self, records: Sequence) -> None:
        self.by_elements: dict[frozenset[str], list] = {}
        for record in records:
            self.by_elements.setdefault(frozenset(record.element_counts()), []).append(record)
        #: elements in any record of the snapshot
        self.elements = frozenset(e for key in self.by_elements for e in key)
        #: elements with an elemental structure in the snapshot
        self.elemental = frozenset(e for key in self.by_elements if len(key) == 1 for e in key)

    def within(self, system: frozenset[str]) -> list:
        out = []
        for size in range(1, len(system) + 1):
            for subset in itertools.combinations(sorted(system), size):
                out += self.by_elements.get(frozenset(subset), [])
        return out


class ChgnetHull:
    """Competing phases on the CHGNet scale, built per chemical system and cached.

    Args:
        model: a loaded CHGNet (default: :func:`htvs.validation.mlip.shared_chgnet` on the CPU,
            loaded on first need).
        cache_dir: folder of the energy cache (default :data:`DEFAULT_CACHE_DIR`).
        mode: ``"static"`` (MP structures as they are) or ``"relaxed"`` (CHGNet-relaxed).
        records: the MP structure records (default: the full 2018 snapshot, read on first need).
        batch_size: structures per CHGNet call when computing reference energies.
        relax_steps: FIRE steps for ``mode="relaxed"``.
    """

    def __init__(self, model=None, cache_dir: Path | str | None = None, mode: str = "static",
                 records: Sequence | None = None, batch_size: int = 16, relax_steps: int = 200) -> None:
        if mode not in MODES:
            raise InvalidInput(f"reference mode must be one of {MODES}, got {mode!r}")
        self._model = model
        self.mode = mode
        self.cache_root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
        self._records = records
        self._index: _SnapshotIndex | None = None
        self.batch_size = batch_size
        self.relax_steps = relax_steps
        self._phases: dict[str, list[PhaseEnergy]] = {}
        self._diagrams: dict[str, object] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ resources

    @property
    def model(self):
        if self._model is None:
            from htvs.validation.mlip import shared_chgnet

            self._model = shared_chgnet("cpu")
        return self._model

    @property
    def index(self) -> _SnapshotIndex:
        if self._index is None:
            if self._records is None:
                from htvs.datasets import load_mp_structures

                self._records = load_mp_structures()
            self._index = _SnapshotIndex(self._records)
        return self._index

    @property
    def cache_dir(self) -> Path:
        """Where this model's and mode's energies are cached."""
        return self.cache_root / model_key() / self.mode

    # ------------------------------------------------------------------ phases

    def check_system(self, elements: Iterable[str], name: str = "structure") -> frozenset[str]:
        """The chemical system of ``elements`` after checking its hull can be built.

        Raises:
            InvalidInput: more than :data:`MAX_ELEMENTS` elements, or an element without an
                elemental phase in the MP snapshot (both named).
        """
        system = frozenset(elements)
        if len(system) > MAX_ELEMENTS:
            raise InvalidInput(f"{name}: {len(system)} elements ({chemsys_of(system)}); the CHGNet hull is built "
                               f"for at most {MAX_ELEMENTS}")
        missing = sorted(system - self.index.elements)
        if missing:
            raise InvalidInput(f"{name}: element(s) {missing} are not in the MP 2018 structure snapshot; "
                               "no hull on the CHGNet scale can be built")
        from htvs.validation.stability import elemental_reference_energies

        no_reference = sorted(e for e in system - self.index.elemental if e not in elemental_reference_energies())
        if no_reference:
            raise InvalidInput(f"{name}: element(s) {no_reference} have neither an elemental structure in the MP "
                               "2018 snapshot nor an MP elemental reference energy")
        return system

    def phases(self, elements: Iterable[str]) -> list[PhaseEnergy]:
        """Lowest-energy phase per composition of the system of ``elements`` (cached)."""
        system = self.check_system(elements)
        name = chemsys_of(system)
        with self._lock:
            if name in self._phases:
                return self._phases[name]
            path = self.cache_dir / f"{name}.json"
            entries = _read_cache(path)
            if entries is None:
                entries = self._compute(system)
                from htvs.atomic import write_json_atomic

                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic({"chemsys": name, "model": model_key(), "mode": self.mode,
                                   "phases": [e.__dict__ for e in entries]}, path)
            lowest: dict[str, PhaseEnergy] = {}
            for entry in entries:
                if entry.formula not in lowest or entry.energy_per_atom_ev < lowest[entry.formula].energy_per_atom_ev:
                    lowest[entry.formula] = entry
            self._phases[name] = sorted(lowest.values(), key=lambda e: e.formula)
            return self._phases[name]

    def _known(self, system: frozenset[str]) -> dict[str, PhaseEnergy]:
        """Phase energies already cached for proper subsystems of ``system``, by material id."""
        known: dict[str, PhaseEnergy] = {}
        for size in range(1, len(system)):
            for subset in itertools.combinations(sorted(system), size):
                for entry in _read_cache(self.cache_dir / f"{chemsys_of(subset)}.json") or []:
                    known[entry.material_id] = entry
        return known

    def _compute(self, system: frozenset[str]) -> list[PhaseEnergy]:
        from htvs.relax.batch import BatchRelaxConfig, relax_batch

        records = self.index.within(system)
        known = self._known(system)
        todo = [r for r in records if r.material_id not in known]
        structures = [Structure.from_str(r.cif, fmt="cif") for r in todo]
        steps = 0 if self.mode == "static" else self.relax_steps
        results = relax_batch(structures, self.model, BatchRelaxConfig(max_steps=steps, batch_size=self.batch_size))
        out = [known[r.material_id] for r in records if r.material_id in known]
        out += [e for e in known.values() if e.material_id.startswith(DFT_ELEMENT_PREFIX)]
        out += [_dft_element(e) for e in sorted(system - self.index.elemental)
                if not any(p.formula == Composition(e).reduced_formula for p in out)]
        for record, structure, result in zip(todo, structures, results):
            if result.error is not None or not math.isfinite(result.energy_ev):
                continue  # a reference phase CHGNet cannot evaluate is left out of the hull
            out.append(PhaseEnergy(record.material_id, structure.composition.reduced_formula, len(structure),
                                   result.energy_per_atom_ev))
        return out

    # ------------------------------------------------------------------ hull

    def phase_diagram(self, elements: Iterable[str]):
        """pymatgen ``PhaseDiagram`` of the system's phases (total energies, eV)."""
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

        phases = self.phases(elements)
        name = chemsys_of(elements)
        with self._lock:
            if name not in self._diagrams:
                entries = [PDEntry(Composition(p.formula), p.energy_per_atom_ev * Composition(p.formula).num_atoms,
                                   name=p.formula) for p in phases]
                self._diagrams[name] = PhaseDiagram(entries)
            return self._diagrams[name]

    def stability(self, structure: Structure, energy_ev: float, name: str = "structure") -> StabilityOnScale:
        """E_f, E_hull and decomposition of ``structure`` at total CHGNet energy ``energy_ev`` (eV).

        Raises:
            InvalidInput: non-finite energy, too many elements, an element outside the snapshot.
        """
        from pymatgen.analysis.phase_diagram import PDEntry

        if not math.isfinite(energy_ev):
            raise InvalidInput(f"{name}: energy must be finite, got {energy_ev!r} eV")
        comp = structure.composition.element_composition
        elements = [e.symbol for e in comp.elements]
        self.check_system(elements, name)
        diagram = self.phase_diagram(elements)
        per_atom = energy_ev / comp.num_atoms
        entry = PDEntry(comp.reduced_composition, per_atom * comp.reduced_composition.num_atoms, name="candidate")
        decomposition, e_hull = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
        parts = sorted(((e.composition.reduced_formula, float(x)) for e, x in decomposition.items()),
                       key=lambda item: -item[1])
        return StabilityOnScale(
            formula=comp.reduced_formula,
            energy_per_atom_ev=per_atom,
            e_form_ev_per_atom=float(diagram.get_form_energy_per_atom(entry)),
            e_above_hull_ev_per_atom=float(e_hull),
            decomposition=tuple(parts),
            chemsys=chemsys_of(elements),
        )


def _dft_element(symbol: str) -> PhaseEnergy:
    """The MP 2023 ground-state energy of ``symbol`` (eV/atom, MP2020 scale) as a phase, for an
    element whose elemental structure the 2018 snapshot lacks (S, Se, F, Br, I, H...)."""
    from htvs.validation.stability import elemental_reference_energies

    return PhaseEnergy(f"{DFT_ELEMENT_PREFIX}{symbol}", Composition(symbol).reduced_formula, 1,
                       elemental_reference_energies()[symbol])


def _read_cache(path: Path) -> list[PhaseEnergy] | None:
    """The phases of a cache file, or None when it is missing or unreadable (recomputed)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [PhaseEnergy(str(p["material_id"]), str(p["formula"]), int(p["n_atoms"]),
                            float(p["energy_per_atom_ev"])) for p in data["phases"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None

