"""Electrochemical stability windows against Li (Li-open grand-potential equilibria).

The window of a Li-containing composition ``c`` is the range of electrode potential
``phi`` (V vs Li/Li+, Li metal = 0 V) over which ``c`` takes up or releases no Li from an open
Li reservoir, with ``phi = -mu_Li / e`` and the elemental Li reference at 0 eV/atom
(Richards et al., Chem. Mater. 28, 266 (2016); Zhu, He & Mo, ACS AMI 7, 23685 (2015)).

Fast algorithm (one :class:`~htvs.thermo.facets.FacetModel` per chemical system, cached):
the lower hull ``E(x)`` of the chemical system is convex and piecewise linear, so its
subdifferential at ``c`` is the convex hull of the chemical-potential vectors ``mu_f`` of the
facets ``f`` that contain ``c`` (``mu_f`` solves ``E_v = sum_i mu_i x_{v,i}`` over the facet's
vertices). Along the line ``c + t (e_Li - c)`` the slope of the hull is ``mu_Li - E(c)`` for
the facet in use, so ``c`` is in equilibrium with the reservoir exactly for
``mu_Li`` in ``[min_f mu_f,Li, max_f mu_f,Li]`` (over the facets containing ``c``):

* ``phi_red = -max mu_Li`` and ``phi_ox = -min mu_Li``; a composition inside a single facet
  (e.g. one that decomposes) has a zero-width window at that facet's potential.
* The products beyond ``phi_red`` are the phases where the ray ``c + t (e_Li - c)`` leaves the
  facet with the largest ``mu_Li`` (the next critical composition towards Li); beyond
  ``phi_ox`` where ``c + t (c - e_Li)`` leaves the facet with the smallest ``mu_Li``.

This is what pymatgen's ``PhaseDiagram.get_element_profile(Li, c)`` reports (checked on
hundreds of compositions in ``tests/test_thermo_window.py``): if the profile's critical
compositions are ``cc_1, cc_2, ...`` (from Li towards the Li-free end; ``cc_0`` = Li metal is
not listed) and ``c = cc_k``, then ``phi_red = -chempot_k``, ``phi_ox = -chempot_{k+1}``, the
reduction products are the phases at ``cc_{k-1}`` and the oxidation products those at
``cc_{k+1}``. If ``c`` lies strictly between ``cc_{k-1}`` and ``cc_k``,
``phi_red = phi_ox = -chempot_k``. When the next equilibrium towards Li is Li metal itself
(``phi_red = 0``: ``c`` is stable against Li metal), the reduction products are empty, like
the profile, which does not list ``cc_0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Composition

from htvs.errors import HTVSError, InvalidInput, RowError, StageFailed, shown
from htvs.thermo.facets import AMOUNT_TOL, FacetModel
from htvs.thermo.hull import ReferenceHull, amounts, check_e_form, group_rows

#: The open element.
LI = "Li"
#: A compound this far (eV/atom) or more below the reference hull is inserted into the diagram.
ON_HULL_TOL = 1e-8
#: ``progress`` is also called after every this many compounds inserted into a diagram (each one
#: is a step of its own, up to tens of ms), so that a caller can stop a long batch in between.
PROGRESS_EVERY_INSERTED = 32


@dataclass(frozen=True)
class WindowResult:
    """Electrochemical stability window of one composition against Li.

    Attributes:
        formula: pymatgen reduced formula.
        phi_red_v: reduction limit, V vs Li/Li+ (>= 0).
        phi_ox_v: oxidation limit, V vs Li/Li+ (>= ``phi_red_v``).
        reduction_products: phases in equilibrium just below ``phi_red_v`` (Li taken up),
            reduced formulas, largest atomic fraction first; empty when that is Li metal.
        oxidation_products: phases just above ``phi_ox_v`` (Li released), likewise.
        inserted: ``True`` if the compound was below the reference hull and its window is that
            of the compound inserted into the diagram; ``False`` for the reference hull's
            equilibrium at this composition.
    """

    formula: str
    phi_red_v: float
    phi_ox_v: float
    reduction_products: tuple[str, ...]
    oxidation_products: tuple[str, ...]
    inserted: bool = False

    @property
    def width_v(self) -> float:
        """``phi_ox - phi_red``, V."""
        return self.phi_ox_v - self.phi_red_v


def _check_li(comp: Composition, formula: object) -> None:
    symbols = {el.symbol for el in comp.elements}
    if LI not in symbols:
        raise InvalidInput(
            f"formula {shown(formula)} contains no Li; the window is defined against a Li reservoir"
        )
    if len(symbols) == 1:
        raise InvalidInput(f"formula {shown(formula)} is Li metal, which has no electrochemical window")


def _products(model: FacetModel, facet: int, weights: np.ndarray) -> tuple[str, ...]:
    pairs = [
        (model.phase_names[v], float(w))
        for v, w in zip(model.facets[facet], weights, strict=True)
        if w > AMOUNT_TOL
    ]
    # weights rounded so that equal fractions order by name, however they were computed
    return tuple(name for name, _ in sorted(pairs, key=lambda p: (-round(p[1], 9), p[0])))


def _window_results(
    model: FacetModel, comps: Sequence[Composition], *, inserted: bool = False
) -> list[WindowResult]:
    """Windows of ``comps`` (all in ``model``'s chemical system) from the facet model."""
    x = model.fractions([amounts(c) for c in comps])
    data = model.window_data(x, LI)
    out = []
    for j, comp in enumerate(comps):
        reduction = (
            ()
            if data.upper_is_element[j]
            else _products(model, int(data.upper_facet[j]), data.upper_weights[j])
        )
        out.append(
            WindowResult(
                formula=comp.reduced_formula,
                phi_red_v=float(-data.mu_max[j]) + 0.0,
                phi_ox_v=float(-data.mu_min[j]) + 0.0,
                reduction_products=reduction,
                oxidation_products=_products(model, int(data.lower_facet[j]), data.lower_weights[j]),
                inserted=inserted,
            )
        )
    return out


def _window_if_inserted(
    hull: ReferenceHull, model: FacetModel, comp: Composition, e_form: float
) -> WindowResult:
    """The window of ``comp`` at ``e_form`` below ``model``'s hull, inserted as a new stable phase.

    The insertion is one beneath-beyond step on the cached facets
    (:meth:`FacetModel.star_of_inserted`; 6.3x faster than a new ``PhaseDiagram`` in
    ``benchmarks/bench_thermo.py``); where that step declines (degenerate geometry) the compound
    takes the ``PhaseDiagram`` path, :func:`_inserted_window`. Both give the same windows (tested).
    """
    star = model.star_of_inserted(model.fractions([amounts(comp)])[0], e_form, comp.reduced_formula)
    if star is None:
        return _inserted_window(hull, comp, e_form)
    return _window_results(star, [comp], inserted=True)[0]


def _inserted_window(hull: ReferenceHull, comp: Composition, e_form: float) -> WindowResult:
    """Slow path: the window of ``comp`` at ``e_form`` inserted into its system's diagram.

    Only the reference's stable phases matter for the new hull, so the diagram is rebuilt
    from them plus the new entry.
    """
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    reference = hull.phase_diagram(comp)
    reduced = comp.reduced_composition
    new = PDEntry(reduced, e_form * reduced.num_atoms, name=comp.reduced_formula)
    try:
        diagram = PhaseDiagram([*reference.stable_entries, new], elements=reference.elements)
    except Exception as exc:  # qhull and pymatgen raise assorted errors
        raise StageFailed(f"cannot insert {comp.reduced_formula} at {e_form} eV/atom: {exc}") from exc
    return _window_results(FacetModel.from_phase_diagram(diagram), [comp], inserted=True)[0]


def _below_hull(model: FacetModel, comps: Sequence[Composition], e_forms: Sequence[float]) -> np.ndarray:
    """Which compounds lie more than ``ON_HULL_TOL`` below ``model``'s hull."""
    hull_e = model.hull_energy(model.fractions([amounts(c) for c in comps]))[0]
    return np.asarray(e_forms, dtype=np.float64) - hull_e < -ON_HULL_TOL


def electrochemical_window(
    hull: ReferenceHull, formula: str, e_form_ev_per_atom: float | None = None
) -> WindowResult:
    """Electrochemical stability window of ``formula`` against Li, V vs Li/Li+.

    Without ``e_form_ev_per_atom`` (or when the compound at that energy lies on or above the
    reference hull) this is the window of the reference hull's equilibrium at this composition,
    from the cached per-system facets: for a stable reference phase its own window, for an
    unstable composition the (usually zero-width) window of its decomposition. A compound given
    with an energy more than ``ON_HULL_TOL`` below the hull would be a new stable phase: it is
    inserted into the diagram (a new ``PhaseDiagram``, slower) and its own window is returned.
    A compound exactly on the hull gets the same window either way (the hull is unchanged).

    Args:
        hull: the reference hull.
        formula: a Li-containing formula with at least one other element.
        e_form_ev_per_atom: optional formation energy of the compound, eV/atom.

    Raises:
        InvalidInput: bad formula, element without reference data, no Li, Li metal, or a
            non-finite energy.
        StageFailed: a phase diagram could not be built.
    """
    comp = hull.composition(formula)
    _check_li(comp, formula)
    model = hull.facet_model(comp)
    if e_form_ev_per_atom is not None:
        energy = check_e_form(formula, e_form_ev_per_atom)
        if _below_hull(model, [comp], [energy])[0]:
            return _window_if_inserted(hull, model, comp, energy)
    return _window_results(model, [comp])[0]


def electrochemical_windows(
    hull: ReferenceHull,
    formulas: Sequence[str],
    e_forms: Sequence[float | None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[WindowResult | RowError]:
    """Windows of many formulas, vectorized per chemical system (see :func:`electrochemical_window`).

    Args:
        hull: the reference hull.
        formulas: Li-containing formulas.
        e_forms: optional formation energies (eV/atom), same length; ``None`` entries mean
            "not given". Rows below the reference hull take the slow insertion path.
        progress: called with the number of rows done after each chemical system, and after
            every :data:`PROGRESS_EVERY_INSERTED` compounds inserted into a diagram. An exception
            it raises stops the batch (how a server stops work whose caller has gone).

    Returns:
        One :class:`WindowResult` or :class:`~htvs.errors.RowError` per input row, in input order.

    Raises:
        InvalidInput: ``e_forms`` differs in length from ``formulas``.
    """
    if e_forms is not None and len(e_forms) != len(formulas):
        raise InvalidInput(f"{len(formulas)} formulas but {len(e_forms)} formation energies")
    groups, comps, errors = group_rows(hull, formulas)
    out: dict[int, WindowResult | RowError] = dict(errors)
    for system, rows in groups.items():
        if progress is not None:
            progress(len(out))
        good: list[int] = []
        for i in rows:
            try:
                _check_li(comps[i], formulas[i])
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
        fast = good
        if e_forms is not None:
            fast, given, energies = [], [], []
            for i in good:
                try:
                    if e_forms[i] is None:
                        fast.append(i)
                    else:
                        energies.append(check_e_form(formulas[i], e_forms[i]))
                        given.append(i)
                except InvalidInput as exc:
                    out[i] = RowError.of(i, formulas[i], exc)
            if given:
                below = _below_hull(model, [comps[i] for i in given], energies)
                inserted = 0
                for i, energy, is_below in zip(given, energies, below, strict=True):
                    if not is_below:
                        fast.append(i)
                        continue
                    inserted += 1
                    if progress is not None and inserted % PROGRESS_EVERY_INSERTED == 0:
                        progress(len(out))
                    try:
                        out[i] = _window_if_inserted(hull, model, comps[i], energy)
                    except HTVSError as exc:
                        out[i] = RowError.of(i, formulas[i], exc)
        if fast:
            out.update(zip(fast, _window_results(model, [comps[i] for i in fast]), strict=True))
    if progress is not None:
        progress(len(out))
    return [out[i] for i in range(len(formulas))]
