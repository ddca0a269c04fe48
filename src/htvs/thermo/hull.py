"""The reference convex hull (MP formation energies) and energies above it.

:class:`ReferenceHull` indexes a table of formation energies by element set once; the entries
of a chemical system are then the union over its subsets. Per chemical system it builds (and
keeps in bounded LRU caches) a :class:`FacetModel` with the lower hull's facets and their
inverse vertex matrices, so that energies above the hull of many formulas are a few numpy
operations per chemical system instead of one ``PhaseDiagram`` per formula. The facet model is
built with qhull directly (:meth:`FacetModel.from_phases`); a pymatgen ``PhaseDiagram`` is built
only where one is asked for (:meth:`ReferenceHull.phase_diagram`).

Energies are formation energies in eV/atom relative to the elements, which are always present
at 0 eV/atom. Nothing is loaded at import.

Limits: a formula (or chemical system) of more than :data:`MAX_CHEMSYS_ELEMENTS` elements is
refused before any diagram is built, and a formation energy must lie within
+-:data:`MAX_ABS_E_FORM_EV_PER_ATOM`. A chemical system's diagram and facets are built once,
even when many threads ask for them at the same time.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np
from pymatgen.core import Composition

from htvs.errors import HTVSError, InvalidInput, RowError, StageFailed, finite_number, shown
from htvs.formula import parse_composition
from htvs.thermo.facets import FacetModel

if TYPE_CHECKING:
    import pandas as pd
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

# pymatgen.analysis.phase_diagram pulls in matplotlib and scipy (~1 s): imported where used.

_SYMBOL = re.compile(r"[A-Z][a-z]?")
#: Drops the amounts and brackets of a formula, keeping its element symbols' letters.
_NOT_LETTERS = str.maketrans("", "", "0123456789.()[] ")
#: An element row of the reference table below this (eV/atom) contradicts the 0 reference.
_ELEMENT_REF_TOL = 1e-6
#: Most elements in the chemical system of one formula. Building a diagram grows steeply with
#: the number of elements (bundled MP data, the elements with the most compounds, one thread):
#: 6 elements 0.08 s, 7 elements 0.4 s, 8 elements 2.3 s, 9 elements 17 s, 10 elements ~110 s.
#: The paper's candidates are ternary and quaternary; 7 leaves room and stays under a second.
MAX_CHEMSYS_ELEMENTS = 7
#: Largest magnitude of a formation energy, eV/atom. Real compounds lie within a few eV/atom;
#: a larger value is a unit error, and values near the float range overflow the hull algebra.
MAX_ABS_E_FORM_EV_PER_ATOM = 100.0

ChemsysLike = str | Composition | Iterable[str]
K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A small thread-safe least-recently-used cache of bounded size that builds each key once.

    The build runs outside the cache's lock (other keys stay available), but only one caller
    builds a missing key: callers that ask for it meanwhile wait for that build (a per-key
    future) instead of building it again. A build that raises is not cached; its waiters get
    the same exception and a later call builds again.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._pending: dict[K, Future[V]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.builds = 0

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            pending = self._pending.get(key)
            if pending is None:
                future: Future[V] = Future()
                self._pending[key] = future
                self.builds += 1
        if pending is not None:
            return pending.result()  # another caller is building it: wait for that build
        try:
            value = build()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            future.set_exception(exc)
            raise
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
            del self._pending[key]
        future.set_result(value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = self.builds = 0

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class HullResult:
    """Energy above the reference hull of one composition.

    Attributes:
        formula: pymatgen reduced formula.
        e_form_ev_per_atom: the formation energy that was given, eV/atom.
        e_above_hull_ev_per_atom: ``e_form - E_hull(composition)``, eV/atom. Negative when the
            compound lies below the current reference hull (it would be a new stable phase);
            this is pymatgen's ``allow_negative=True`` convention.
        decomposition: the reference hull's equilibrium phases at this composition as
            ``(reduced formula, atomic fraction)``, largest fraction first. A composition that is
            itself a stable reference phase decomposes into itself.
    """

    formula: str
    e_form_ev_per_atom: float
    e_above_hull_ev_per_atom: float
    decomposition: tuple[tuple[str, float], ...]


class ReferenceHull:
    """Formation energies indexed by element set, with cached per-chemical-system hulls.

    Build with :meth:`from_table` or :meth:`bundled`. Elements are always present at
    0 eV/atom (element rows of the table are replaced by that reference).

    Args:
        rows: ``{element set: ((reduced formula, E_f eV/atom), ...)}`` without element rows.
        elements: symbols a formula may use.
        source: a short label of the data, used in error messages (e.g. ``"MP"``).
        cache_size: most chemical systems kept per cache (diagrams and facet models).
        max_elements: most elements in a formula's chemical system
            (:data:`MAX_CHEMSYS_ELEMENTS`); a larger one is refused before any work.
    """

    def __init__(
        self,
        rows: Mapping[frozenset[str], Sequence[tuple[str, float]]],
        elements: Iterable[str],
        *,
        source: str = "table",
        cache_size: int = 256,
        max_elements: int = MAX_CHEMSYS_ELEMENTS,
    ) -> None:
        if cache_size < 1:
            raise InvalidInput(f"cache_size must be >= 1, got {cache_size}")
        if max_elements < 1:
            raise InvalidInput(f"max_elements must be >= 1, got {max_elements}")
        self.max_elements = int(max_elements)
        self._rows = {key: tuple(value) for key, value in rows.items()}
        self.elements: frozenset[str] = frozenset(elements)
        self.source = source
        self._pd_entries: dict[str, PDEntry] = {}
        self._atomic_fractions: dict[str, dict[str, float]] = {}
        self._diagrams: _LRU[frozenset[str], PhaseDiagram] = _LRU(cache_size)
        self._models: _LRU[frozenset[str], FacetModel] = _LRU(4 * cache_size)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame,
        *,
        elements: Iterable[str] | None = None,
        source: str = "table",
        cache_size: int = 256,
        validate: bool = True,
        max_elements: int = MAX_CHEMSYS_ELEMENTS,
    ) -> ReferenceHull:
        """Index a table with columns ``formula`` and ``e_form_ev_per_atom`` (eV/atom).

        Args:
            table: one row per compound; duplicate compositions keep the lowest energy.
            elements: allowed element symbols; default: those in the table.
            source: label used in error messages.
            cache_size, max_elements: see :class:`ReferenceHull`.
            validate: parse every formula with pymatgen (reduce it, check the elements). With
                ``False`` the formulas must already be pymatgen reduced formulas (as in the
                bundled table) and are only scanned for element symbols, which is much faster.

        Raises:
            InvalidInput: missing column, unparsable formula, non-finite energy, or an element
                row below 0 eV/atom.
        """
        missing = {"formula", "e_form_ev_per_atom"} - set(table.columns)
        if missing:
            raise InvalidInput(f"reference table lacks column(s) {sorted(missing)}")
        best: dict[str, tuple[frozenset[str], float]] = {}
        seen: set[str] = set()
        symbols_of: dict[str, frozenset[str]] = {}
        column = table["e_form_ev_per_atom"]
        # a float column is checked in one vectorized pass; check_e_form then only words the
        # message of a bad value (calling it per row cost ~1 s on the bundled 95k rows)
        if column.dtype.kind == "f":
            values = column.to_numpy(dtype=np.float64)
            plain = np.isfinite(values) & (np.abs(values) <= MAX_ABS_E_FORM_EV_PER_ATOM)
        else:
            values = column.to_numpy(dtype=object)
            plain = np.zeros(len(values), dtype=bool)
        for formula, value, is_plain in zip(table["formula"], values, plain, strict=True):
            energy = float(value) if is_plain else check_e_form(formula, value)
            if validate:
                comp = parse_composition(formula)
                name = comp.reduced_formula
                symbols = frozenset(el.symbol for el in comp.elements)
                seen |= symbols
            else:
                name = str(formula)
                # formulas of one element set share their letters ("Li3PS4", "Li7P3S11" ->
                # "LiPS"): scan each letter string once (95k rows, ~30k element sets)
                letters = name.translate(_NOT_LETTERS)
                symbols = symbols_of.get(letters)
                if symbols is None:
                    symbols = symbols_of[letters] = frozenset(_SYMBOL.findall(letters))
                    seen |= symbols
            if len(symbols) == 1:
                if energy < -_ELEMENT_REF_TOL:
                    raise InvalidInput(
                        f"reference row {shown(formula)} has E_f = {energy} eV/atom < 0; "
                        "an element's formation energy is 0 by definition"
                    )
                continue
            if name not in best or energy < best[name][1]:
                best[name] = (symbols, energy)
        grouped: dict[frozenset[str], list[tuple[str, float]]] = {}
        for name, (symbols, energy) in best.items():
            grouped.setdefault(symbols, []).append((name, energy))
        allowed = frozenset(elements) if elements is not None else frozenset(seen)
        return cls(grouped, allowed | seen, source=source, cache_size=cache_size, max_elements=max_elements)

    @classmethod
    def bundled(cls, *, cache_size: int = 256, max_elements: int = MAX_CHEMSYS_ELEMENTS) -> ReferenceHull:
        """The bundled MP formation energies (lowest per formula) over the 89 MP elements."""
        from htvs.datasets import load_mp_formation_energies, reference_elements

        return cls.from_table(
            load_mp_formation_energies(),
            elements=reference_elements(),
            source="MP",
            cache_size=cache_size,
            validate=False,
            max_elements=max_elements,
        )

    # -- look-ups ---------------------------------------------------------------------------

    def composition(self, formula: str) -> Composition:
        """Parse ``formula`` and check that its elements are in the reference data.

        Raises:
            InvalidInput: unparsable formula or an element without reference data.
        """
        comp = parse_composition(formula)
        symbols = [el.symbol for el in comp.elements]
        self._check_symbols(symbols, formula)
        self._check_size(symbols, f"formula {shown(formula)}")
        return comp

    def chemsys(self, spec: ChemsysLike) -> frozenset[str]:
        """Normalize ``"Li-P-S"``, ``["Li", "P", "S"]`` or a Composition to a set of symbols."""
        if isinstance(spec, Composition):
            symbols = [el.symbol for el in spec.elements]
        elif isinstance(spec, str):
            symbols = [s.strip() for s in spec.split("-") if s.strip()]
        else:
            symbols = [str(s) for s in spec]
        if not symbols:
            raise InvalidInput(f"empty chemical system: {shown(spec)}")
        self._check_symbols(symbols, spec)
        system = frozenset(symbols)
        self._check_size(system, f"chemical system {shown(spec)}")
        return system

    def _check_size(self, symbols: Iterable[str], what: str) -> None:
        """Refuse a chemical system of more than :attr:`max_elements` elements (InvalidInput)."""
        system = sorted(set(symbols))
        if len(system) > self.max_elements:
            raise InvalidInput(
                f"{what} spans the {len(system)}-element chemical system {'-'.join(system)}; "
                f"the reference hull takes at most {self.max_elements} elements per chemical system"
            )

    def _check_symbols(self, symbols: Iterable[str], what: object) -> None:
        for symbol in symbols:
            if symbol not in self.elements:
                name = symbol if len(symbol) <= 3 else shown(symbol, 8)
                raise InvalidInput(
                    f"element {name} (in {shown(what)}) is not in the reference data "
                    f"({len(self.elements)} {self.source} elements)"
                )

    def _compounds(self, system: frozenset[str]) -> list[tuple[str, float]]:
        """``(reduced formula, E_f in eV/atom)`` of every reference compound within ``system``."""
        names: list[tuple[str, float]] = []
        n_subsets = 2 ** len(system)
        if n_subsets <= len(self._rows):
            ordered = sorted(system)
            for size in range(2, len(ordered) + 1):
                for subset in itertools.combinations(ordered, size):
                    names.extend(self._rows.get(frozenset(subset), ()))
        else:
            for key, rows in self._rows.items():
                if key <= system:
                    names.extend(rows)
        return names

    def entries(self, chemsys: ChemsysLike) -> list[PDEntry]:
        """PDEntries of every reference compound in ``chemsys`` plus the elements at 0 eV."""
        system = self.chemsys(chemsys)
        from pymatgen.analysis.phase_diagram import PDEntry

        out = [self._entry(name, energy) for name, energy in self._compounds(system)]
        for symbol in sorted(system):
            element = Composition(symbol)
            out.append(PDEntry(element, 0.0, name=element.reduced_formula))
        return out

    def _fractions(self, name: str) -> dict[str, float]:
        """Atomic fractions of a reference compound (cached per formula)."""
        fractions = self._atomic_fractions.get(name)
        if fractions is None:
            comp = Composition(name)
            fractions = {el.symbol: comp.get_atomic_fraction(el) for el in comp.elements}
            self._atomic_fractions[name] = fractions
        return fractions

    def _build_facet_model(self, system: frozenset[str]) -> FacetModel:
        elements = tuple(sorted(system))
        compounds = self._compounds(system)
        # an element phase is named as pymatgen names it (its reduced formula: N2, O2, Li)
        names = [*(Composition(el).reduced_formula for el in elements), *(name for name, _ in compounds)]
        energies = np.array([0.0] * len(elements) + [energy for _, energy in compounds], dtype=np.float64)
        fractions = np.zeros((len(names), len(elements)), dtype=np.float64)
        fractions[np.arange(len(elements)), np.arange(len(elements))] = 1.0
        column = {el: i for i, el in enumerate(elements)}
        for row, (name, _) in enumerate(compounds, start=len(elements)):
            for symbol, fraction in self._fractions(name).items():
                fractions[row, column[symbol]] = fraction
        try:
            return FacetModel.from_phases(elements, names, fractions, energies)
        except Exception as exc:  # qhull raises assorted errors on degenerate input
            raise StageFailed(f"cannot build the convex hull of {'-'.join(elements)}: {exc}") from exc

    def _entry(self, name: str, e_form: float) -> PDEntry:
        entry = self._pd_entries.get(name)
        if entry is None:
            from pymatgen.analysis.phase_diagram import PDEntry

            comp = Composition(name)
            entry = PDEntry(comp, e_form * comp.num_atoms, name=name)
            self._pd_entries[name] = entry
        return entry

    def phase_diagram(self, chemsys: ChemsysLike) -> PhaseDiagram:
        """pymatgen ``PhaseDiagram`` of ``chemsys`` (entry energy = E_f x atoms), LRU-cached."""
        system = self.chemsys(chemsys)
        return self._diagrams.get_or_build(system, lambda: _build_diagram(self.entries(system), system))

    def facet_model(self, chemsys: ChemsysLike) -> FacetModel:
        """Precomputed facets of ``chemsys``'s hull (see :class:`FacetModel`), LRU-cached."""
        system = self.chemsys(chemsys)
        return self._models.get_or_build(system, lambda: self._build_facet_model(system))

    def clear_cache(self) -> None:
        """Drop every cached diagram and facet model (the element-set index stays)."""
        self._diagrams.clear()
        self._models.clear()

    def cache_info(self) -> dict[str, int]:
        """Sizes and hit counts of the caches."""
        return {
            "diagrams": len(self._diagrams),
            "models": len(self._models),
            "model_hits": self._models.hits,
            "model_misses": self._models.misses,
            "diagram_builds": self._diagrams.builds,
            "model_builds": self._models.builds,
        }

    def __repr__(self) -> str:
        n_rows = sum(len(v) for v in self._rows.values())
        return f"ReferenceHull(source={self.source!r}, compounds={n_rows}, elements={len(self.elements)})"


def _build_diagram(entries: list[PDEntry], system: frozenset[str]) -> PhaseDiagram:
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    try:
        return PhaseDiagram(entries)
    except Exception as exc:  # qhull and pymatgen raise assorted errors
        raise StageFailed(f"cannot build the phase diagram of {'-'.join(sorted(system))}: {exc}") from exc


# -- energies above the hull --------------------------------------------------------------------


def check_e_form(formula: object, value: object) -> float:
    """A formation energy (eV/atom) given for ``formula`` as a finite float.

    Raises:
        InvalidInput: not a number, not finite, or beyond +-:data:`MAX_ABS_E_FORM_EV_PER_ATOM`;
            the message names the formula and value.
    """
    energy = finite_number(f"e_form_ev_per_atom for {shown(formula)}", value)
    if abs(energy) > MAX_ABS_E_FORM_EV_PER_ATOM:
        raise InvalidInput(
            f"e_form_ev_per_atom for {shown(formula)} is {energy!r} eV/atom, beyond "
            f"+-{MAX_ABS_E_FORM_EV_PER_ATOM:g} eV/atom (a unit error?)"
        )
    return energy


def group_rows(
    hull: ReferenceHull, formulas: Sequence[str]
) -> tuple[dict[frozenset[str], list[int]], dict[int, Composition], dict[int, RowError]]:
    """Parse ``formulas`` and group their row indices by chemical system.

    Returns:
        ``(rows by chemical system, composition by row, error by row)``.
    """
    groups: dict[frozenset[str], list[int]] = {}
    comps: dict[int, Composition] = {}
    errors: dict[int, RowError] = {}
    for i, formula in enumerate(formulas):
        try:
            comp = hull.composition(formula)
        except HTVSError as exc:
            errors[i] = RowError.of(i, formula, exc)
            continue
        comps[i] = comp
        groups.setdefault(frozenset(el.symbol for el in comp.elements), []).append(i)
    return groups, comps, errors


def amounts(comp: Composition) -> dict[str, float]:
    """``{symbol: amount}`` of a composition."""
    return {el.symbol: float(amt) for el, amt in comp.items()}


def e_above_hull(hull: ReferenceHull, formula: str, e_form_ev_per_atom: float) -> HullResult:
    """Energy above the reference hull of ``formula`` at formation energy ``e_form_ev_per_atom``.

    Args:
        hull: the reference hull.
        formula: e.g. ``"Li3PS4"``.
        e_form_ev_per_atom: formation energy, eV/atom, relative to the elements.

    Raises:
        InvalidInput: bad formula, element without reference data, non-finite energy.
        StageFailed: the chemical system's phase diagram could not be built.
    """
    comp = hull.composition(formula)
    energy = check_e_form(formula, e_form_ev_per_atom)
    model = hull.facet_model(comp)
    return _hull_results(model, [comp], [energy])[0]


def _hull_results(
    model: FacetModel, comps: Sequence[Composition], energies: Sequence[float]
) -> list[HullResult]:
    x = model.fractions([amounts(c) for c in comps])
    hull_e, facet, weights = model.hull_energy(x)
    return [
        HullResult(
            formula=comp.reduced_formula,
            e_form_ev_per_atom=energy,
            e_above_hull_ev_per_atom=float(energy - hull_e[j]),
            decomposition=model.decomposition(int(facet[j]), weights[j]),
        )
        for j, (comp, energy) in enumerate(zip(comps, energies, strict=True))
    ]


def e_above_hull_many(
    hull: ReferenceHull,
    formulas: Sequence[str],
    e_forms: Sequence[float],
    progress: Callable[[int], None] | None = None,
) -> list[HullResult | RowError]:
    """Energies above the hull of many formulas, vectorized per chemical system.

    Rows are grouped by chemical system; each group is located in the cached facets of its
    system with one batched matrix product. A bad row yields a :class:`~htvs.errors.RowError` and never
    stops the batch.

    Args:
        hull: the reference hull.
        formulas: formulas, e.g. ``["Li3PS4", "Li2O"]``.
        e_forms: their formation energies, eV/atom, same length.
        progress: called with the number of rows done after each chemical system.

    Returns:
        One :class:`HullResult` or :class:`~htvs.errors.RowError` per input row, in input order.

    Raises:
        InvalidInput: ``formulas`` and ``e_forms`` differ in length.
    """
    if len(formulas) != len(e_forms):
        raise InvalidInput(f"{len(formulas)} formulas but {len(e_forms)} formation energies")
    groups, comps, errors = group_rows(hull, formulas)
    out: dict[int, HullResult | RowError] = dict(errors)
    for system, rows in groups.items():
        if progress is not None:
            progress(len(out))
        energies: list[float] = []
        good: list[int] = []
        for i in rows:
            try:
                energies.append(check_e_form(formulas[i], e_forms[i]))
                good.append(i)
            except InvalidInput as exc:
                out[i] = RowError.of(i, formulas[i], exc)
        if not good:
            continue
        try:
            model = hull.facet_model(system)
        except HTVSError as exc:
            out.update((i, RowError.of(i, formulas[i], exc)) for i in good)
            continue
        out.update(zip(good, _hull_results(model, [comps[i] for i in good], energies), strict=True))
    if progress is not None:
        progress(len(out))
    return [out[i] for i in range(len(formulas))]
