"""Precomputed facets of one chemical system's lower convex hull, for vectorized look-ups.

A :class:`FacetModel` is built once per chemical system from a pymatgen ``PhaseDiagram``
(so it uses exactly pymatgen's facets) and then answers, for many compositions at once:

* which facet contains a composition and its barycentric weights (the equilibrium
  decomposition, and the hull energy ``E_hull(c) = w . E``);
* the chemical potentials of every facet (``mu`` solves ``E_v = sum_i mu_i x_{v,i}`` over the
  facet's vertices ``v``), which give the Li-open electrochemical window (see
  :mod:`htvs.thermo.window`).

Compositions are atomic-fraction vectors in the order of :attr:`FacetModel.elements`. Every
facet stores the inverse ``V^-1`` of its vertex-fraction matrix (rows = vertices), so the
barycentric weights of ``x`` in facet ``f`` are ``x @ V_f^-1`` and ``mu_f = V_f^-1 @ E_f``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PhaseDiagram

#: Containment tolerance on barycentric weights (pymatgen uses ``numerical_tol / 10`` = 1e-9).
CONTAIN_TOL = 1e-9
#: Phases with a weight at or below this are not part of a decomposition (pymatgen: 1e-8).
AMOUNT_TOL = 1e-8
#: Facets whose mu_Li are within this (eV) of the extreme one are ties.
MU_TOL = 1e-8
#: A phase joins the hull construction below this formation energy, eV/atom (pymatgen's
#: ``PhaseDiagram.formation_energy_tol``).
_FORMATION_TOL = 1e-11
#: Facets whose vertex matrix has a smaller |determinant| are degenerate (pymatgen's bound).
_DEGENERATE_DET = 1e-14
#: Upper bound on the number of floats in one (rows x facets x elements) temporary.
_CHUNK_FLOATS = 4_000_000


@dataclass(frozen=True, eq=False)
class FacetModel:
    """One chemical system's hull facets with precomputed inverses and chemical potentials.

    Attributes:
        elements: element symbols, the column order of composition vectors.
        phase_names: reduced formulas of the hull's vertices (pymatgen ``qhull_entries``).
        phase_energies: their formation energies, eV/atom, shape ``(P,)``.
        facets: vertex indices into ``phase_names``, shape ``(F, n)``.
        inverse: ``V_f^-1`` per facet, shape ``(F, n, n)``.
        mu: chemical potentials per facet, eV/atom relative to the elements, shape ``(F, n)``.
        phase_fractions: atomic fractions of the phases, shape ``(P, n)``.
    """

    elements: tuple[str, ...]
    phase_names: tuple[str, ...]
    phase_energies: np.ndarray
    facets: np.ndarray
    inverse: np.ndarray
    mu: np.ndarray
    phase_fractions: np.ndarray

    @classmethod
    def from_phase_diagram(cls, diagram: PhaseDiagram) -> FacetModel:
        """Precompute facet inverses and chemical potentials of ``diagram`` (pymatgen's facets)."""
        elements = tuple(el.symbol for el in diagram.elements)
        n = len(elements)
        entries = diagram.qhull_entries
        fractions = np.array(
            [[entry.composition.get_atomic_fraction(el) for el in diagram.elements] for entry in entries],
            dtype=np.float64,
        )
        energies = np.array([entry.energy_per_atom for entry in entries], dtype=np.float64)
        facets = np.asarray([list(f) for f in diagram.facets], dtype=np.intp).reshape(-1, n)
        names = tuple(str(entry.name) for entry in entries)
        return cls._with_inverses(elements, names, fractions, energies, facets)

    @classmethod
    def from_phases(
        cls,
        elements: Sequence[str],
        names: Sequence[str],
        fractions: np.ndarray,
        energies: np.ndarray,
    ) -> FacetModel:
        """The lower convex hull of phases given as atomic fractions and E_f (eV/atom), directly.

        The same construction as pymatgen's ``PhaseDiagram`` (the elements at 0 eV/atom and the
        phases below 0 eV/atom go to qhull, options ``Qt i``, with one apex point above the
        centroid so that the hull is full-dimensional; facets touching the apex or degenerate
        ones are dropped), without building a ``PhaseDiagram``: importing
        ``pymatgen.analysis.phase_diagram`` alone takes about a second (it loads matplotlib's
        pyplot, plotly and scipy.interpolate), which a single-formula command paid at start-up.
        Hull energies and decompositions agree with ``from_phase_diagram`` (tested); where
        several phases lie on one plane the triangulation, and so a decomposition at a tie, may
        differ.

        Args:
            elements: symbols, the column order of ``fractions``; each must have a row of
                its own (fraction 1, energy 0) among the phases.
            names: one name per phase (reduced formulas).
            fractions: ``(P, n)`` atomic fractions.
            energies: ``(P,)`` formation energies, eV/atom.
        """
        from scipy.spatial import ConvexHull

        fractions = np.asarray(fractions, dtype=np.float64)
        energies = np.asarray(energies, dtype=np.float64)
        n = len(elements)
        is_element = np.isclose(fractions.max(axis=1), 1.0)
        keep = np.flatnonzero(is_element | (energies < -_FORMATION_TOL))
        fractions, energies = fractions[keep], energies[keep]
        kept_names = tuple(str(names[i]) for i in keep)
        if n == 1:
            facets = np.array([[int(np.argmin(energies))]], dtype=np.intp)
        else:
            points = np.column_stack([fractions[:, 1:], energies])
            apex = np.full(n, 1.0 / n)
            apex[-1] = points.max() + 1.0
            simplices = ConvexHull(np.vstack([points, apex]), qhull_options="Qt i").simplices
            apex_index = len(points)
            lower = []
            for simplex in simplices:
                if simplex.max() == apex_index:
                    continue
                matrix = points[simplex].copy()
                matrix[:, -1] = 1.0
                if abs(np.linalg.det(matrix)) > _DEGENERATE_DET:
                    lower.append(simplex)
            facets = np.asarray(lower, dtype=np.intp).reshape(-1, n)
        return cls._with_inverses(tuple(elements), kept_names, fractions, energies, facets)

    @classmethod
    def _with_inverses(
        cls,
        elements: tuple[str, ...],
        names: tuple[str, ...],
        fractions: np.ndarray,
        energies: np.ndarray,
        facets: np.ndarray,
    ) -> FacetModel:
        inverse = np.linalg.inv(fractions[facets])  # (F, n, n), rows = vertices
        mu = np.einsum("fij,fj->fi", inverse, energies[facets])
        return cls(
            elements=elements,
            phase_names=names,
            phase_energies=energies,
            facets=facets,
            inverse=inverse,
            mu=mu,
            phase_fractions=fractions,
        )

    @property
    def n_facets(self) -> int:
        """Number of hull facets."""
        return int(self.facets.shape[0])

    def fractions(self, amounts: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Atomic-fraction matrix ``(N, n)`` of compositions given as ``{symbol: amount}``.

        Every symbol must be one of :attr:`elements` (the caller groups by chemical system).
        """
        column = {el: i for i, el in enumerate(self.elements)}
        out = np.zeros((len(amounts), len(self.elements)), dtype=np.float64)
        for row, amount in enumerate(amounts):
            for symbol, value in amount.items():
                out[row, column[symbol]] = value
        out /= out.sum(axis=1, keepdims=True)
        return out

    def _row_slices(self, n_rows: int) -> Iterator[slice]:
        """Row slices small enough that an ``(rows, F, n)`` temporary stays bounded."""
        per = max(1, _CHUNK_FLOATS // max(1, self.n_facets * len(self.elements)))
        for start in range(0, n_rows, per):
            yield slice(start, min(start + per, n_rows))

    def barycentric(self, x: np.ndarray) -> np.ndarray:
        """Barycentric weights of every row of ``x`` in every facet, shape ``(N, F, n)``."""
        return np.einsum("ni,fij->nfj", x, self.inverse)

    def locate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First facet (pymatgen's facet order) containing each row of ``x``, and its weights.

        Returns:
            ``(facet_index (N,), weights (N, n))``; the weights refer to ``facets[facet_index]``.
            A row that no facet contains within :data:`CONTAIN_TOL` (a numerical corner case)
            gets the facet whose smallest weight is largest.
        """
        n_rows = x.shape[0]
        index = np.empty(n_rows, dtype=np.intp)
        weights = np.empty((n_rows, len(self.elements)), dtype=np.float64)
        for rows in self._row_slices(n_rows):
            w = self.barycentric(x[rows])
            lowest = w.min(axis=2)
            inside = lowest >= -CONTAIN_TOL
            first = np.where(inside.any(axis=1), inside.argmax(axis=1), lowest.argmax(axis=1))
            index[rows] = first
            weights[rows] = w[np.arange(len(first)), first]
        return index, weights

    def hull_energy(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hull energy (eV/atom) at each row of ``x``, with the facet index and weights used."""
        index, weights = self.locate(x)
        energy = np.einsum("nj,nj->n", weights, self.phase_energies[self.facets[index]])
        return energy, index, weights

    def decomposition(self, facet: int, weights: np.ndarray) -> tuple[tuple[str, float], ...]:
        """``(phase, fraction)`` pairs with fraction > :data:`AMOUNT_TOL`, largest first."""
        pairs = [
            (self.phase_names[v], float(w))
            for v, w in zip(self.facets[facet], weights, strict=True)
            if w > AMOUNT_TOL
        ]
        return tuple(sorted(pairs, key=lambda p: (-p[1], p[0])))

    def star_of_inserted(self, x: np.ndarray, energy: float, name: str) -> FacetModel | None:
        """The facets a new phase at fractions ``x`` and ``energy`` (eV/atom) below the hull
        would have, as a model holding only those facets; None if that cannot be built cleanly.

        This is one step of the beneath-beyond convex-hull algorithm, and it replaces a new
        ``PhaseDiagram`` (a qhull run, ~3 ms) with a few small array operations. The facets
        *visible* from the new point are those whose supporting hyperplane ``E = mu_f . x`` lies
        above it; the new hull replaces them with cones from the new point to the ridges on the
        boundary of the visible region (ridges shared with a non-visible facet or lying on the
        composition simplex's boundary). Only these cones contain the new phase, and they are
        all its window needs. Cones that are flat in composition space (the new point on a
        ridge's affine span) are not facets and are dropped.

        Returns None (the caller takes the slow path) when the point is not below the hull or a
        cone's vertex matrix cannot be inverted reliably.
        """
        x = np.asarray(x, dtype=np.float64)
        visible = np.flatnonzero(x @ self.mu.T - energy > 1e-8)
        if visible.size == 0:
            return None
        n = len(self.elements)
        ridge_count: dict[tuple[int, ...], int] = {}
        for facet in self.facets[visible]:
            vertices = sorted(int(v) for v in facet)
            for skip in range(n):
                ridge = tuple(vertices[:skip] + vertices[skip + 1:])
                ridge_count[ridge] = ridge_count.get(ridge, 0) + 1
        horizon = [ridge for ridge, count in ridge_count.items() if count == 1]
        if not horizon:
            return None
        new_index = len(self.phase_names)
        fractions = np.vstack([self.phase_fractions, x[None, :]])
        energies = np.append(self.phase_energies, energy)
        cones = np.array([[*ridge, new_index] for ridge in horizon], dtype=np.intp)
        matrices = fractions[cones]  # (C, n, n)
        flat = np.abs(np.linalg.det(matrices)) < 1e-10  # the new point on a ridge's span
        cones, matrices = cones[~flat], matrices[~flat]
        if cones.shape[0] == 0:
            return None
        inverse = np.linalg.inv(matrices)
        if not np.allclose(inverse @ matrices, np.eye(n)[None], atol=1e-8):
            return None
        return FacetModel(
            elements=self.elements,
            phase_names=(*self.phase_names, name),
            phase_energies=energies,
            facets=cones,
            inverse=inverse,
            mu=np.einsum("fij,fj->fi", inverse, energies[cones]),
            phase_fractions=fractions,
        )

    def window_data(self, x: np.ndarray, open_element: str) -> WindowData:
        """Open-element chemical-potential range and the adjacent equilibria for each row of ``x``.

        For a composition ``c`` the range of ``mu_el`` over which ``c`` exchanges none of the
        open element with the reservoir is the projection on the ``el`` axis of the lower hull's
        subdifferential at ``c``: ``[min, max]`` of ``mu_el`` over the facets containing ``c``.
        The equilibrium just beyond the upper end (more of ``el`` available) is read where the
        ray ``c + t (e_el - c)`` leaves the facet with the largest ``mu_el`` (ties: the facet the
        ray actually runs through, i.e. with the longest stretch); just beyond the lower end,
        where ``c + t (c - e_el)`` leaves the facet with the smallest ``mu_el``.
        """
        k = self.elements.index(open_element)
        n_rows, n = x.shape
        mu_el = self.mu[:, k]
        out = WindowData(
            mu_max=np.empty(n_rows),
            mu_min=np.empty(n_rows),
            upper_facet=np.empty(n_rows, dtype=np.intp),
            upper_weights=np.empty((n_rows, n)),
            upper_is_element=np.empty(n_rows, dtype=bool),
            lower_facet=np.empty(n_rows, dtype=np.intp),
            lower_weights=np.empty((n_rows, n)),
        )
        # barycentric weights of the pure open element in every facet: row k of V_f^-1
        el_bary = self.inverse[:, k, :]  # (F, n)
        for rows in self._row_slices(n_rows):
            w = self.barycentric(x[rows])  # (m, F, n)
            m = w.shape[0]
            inside = w.min(axis=2) >= -CONTAIN_TOL
            # a row that no facet contains (numerical corner case): use the nearest facet
            lonely = ~inside.any(axis=1)
            if lonely.any():
                inside[lonely, w[lonely].min(axis=2).argmax(axis=1)] = True
            masked_hi = np.where(inside, mu_el[None, :], -np.inf)
            masked_lo = np.where(inside, mu_el[None, :], np.inf)
            hi = masked_hi.max(axis=1)
            lo = masked_lo.min(axis=1)
            out.mu_max[rows] = hi
            out.mu_min[rows] = lo
            for sign, extreme, facet_out, weight_out in (
                (1.0, hi, out.upper_facet, out.upper_weights),
                (-1.0, lo, out.lower_facet, out.lower_weights),
            ):
                ties = inside & (np.abs(mu_el[None, :] - extreme[:, None]) <= MU_TOL)
                # direction of the ray in barycentric coordinates: +-(bary(e_el) - w)
                dw = sign * (el_bary[None, :, :] - w)
                t_exit = _exit_parameter(w, dw)
                t_exit = np.where(ties, t_exit, -1.0)
                best = t_exit.argmax(axis=1)
                pick = np.arange(m)
                t_best = t_exit[pick, best]
                exit_w = w[pick, best] + t_best[:, None] * dw[pick, best]
                facet_out[rows] = best
                weight_out[rows] = np.clip(exit_w, 0.0, None)
                if sign > 0:
                    # the ray reached the pure open element: nothing but the element is there
                    out.upper_is_element[rows] = t_best >= 1.0 - 1e-9
        return out


@dataclass(frozen=True, eq=False)
class WindowData:
    """Per-row output of :meth:`FacetModel.window_data` (arrays over the rows)."""

    mu_max: np.ndarray
    mu_min: np.ndarray
    upper_facet: np.ndarray
    upper_weights: np.ndarray
    upper_is_element: np.ndarray
    lower_facet: np.ndarray
    lower_weights: np.ndarray


def _exit_parameter(w: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """Largest ``t >= 0`` with ``w + t dw >= 0`` (per row and facet); 0 if the ray leaves at once."""
    decreasing = dw < -1e-12
    start = np.where(w > CONTAIN_TOL, w, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(decreasing, start / np.where(decreasing, -dw, 1.0), np.inf)
    return ratio.min(axis=2)
