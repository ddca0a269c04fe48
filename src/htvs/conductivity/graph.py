"""Crystal graphs and global descriptors for the Li-ion conductivity model.

A site is the occupancy-weighted mix of its species' matscholar200 embeddings (partially occupied
sites are kept, never dropped), plus its vacancy fraction ``1 - sum(occupancy)``. Edges join each
site to its ``max_neighbors`` nearest periodic neighbours within ``cutoff`` (Å); distances are
expanded on Gaussians. Global descriptors (composition, space group, lattice, atom count) are
built either from a structure or, for entries without a CIF, from the OBELiX table row.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from htvs.errors import InvalidInput

#: Elemental properties averaged (mean and std, weighted by atomic fraction) in the descriptors.
ELEMENT_PROPERTIES = ("Z", "X", "atomic_radius", "row", "group", "atomic_mass", "mendeleev_no")
#: Crystal systems, by the upper space-group number of each.
_SYSTEM_BOUNDS = (2, 15, 74, 142, 167, 194, 230)
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
#: Largest atomic number with a descriptor row.
MAX_Z = 103
#: Width of a node's input features: a 200-wide element embedding plus the vacancy fraction.
NODE_INPUT = 201


@dataclass(frozen=True)
class GraphConfig:
    """How structures become graphs.

    Attributes:
        cutoff: neighbour search radius, Å.
        max_neighbors: nearest neighbours kept per site.
        symprec: spglib tolerance (Å) used to find the space group of a structure.
    """

    cutoff: float = 5.0
    max_neighbors: int = 12
    symprec: float = 0.1

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class CrystalGraph:
    """One structure as arrays (float32 / int64).

    Attributes:
        node_features: (n_sites, 201) occupancy-weighted embedding + vacancy fraction.
        edge_src, edge_dst: (n_edges,) a message flows from ``edge_src`` to ``edge_dst``.
        edge_distance: (n_edges,) Å.
        global_features: (n_global,) see :func:`global_feature_names`.
    """

    node_features: np.ndarray
    edge_src: np.ndarray
    edge_dst: np.ndarray
    edge_distance: np.ndarray
    global_features: np.ndarray

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> CrystalGraph:
        return cls(**{k: np.asarray(arrays[f"{prefix}/{k}"]) for k in cls.__dataclass_fields__})


@functools.cache
def element_embedding() -> np.ndarray:
    """(MAX_Z + 1, 200) matscholar200 vectors by atomic number; zero rows for missing elements."""
    from pymatgen.core import Element

    from htvs.datasets import element_embedding_table

    table = element_embedding_table("matscholar200")
    out = np.zeros((MAX_Z + 1, 200), dtype=np.float32)
    for symbol, vector in table.items():
        z = Element(symbol).Z
        if z <= MAX_Z:
            out[z] = np.asarray(vector, dtype=np.float32)
    return out


@functools.cache
def element_properties() -> np.ndarray:
    """(MAX_Z + 1, len(ELEMENT_PROPERTIES)) elemental properties; gaps filled by column means."""
    import warnings

    from pymatgen.core import Element

    out = np.full((MAX_Z + 1, len(ELEMENT_PROPERTIES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, MAX_Z + 1):
            el = Element.from_Z(z)
            for j, name in enumerate(ELEMENT_PROPERTIES):
                try:
                    value = float(getattr(el, name))
                except (TypeError, ValueError, AttributeError):
                    value = math.nan
                out[z, j] = value
    means = np.nanmean(out[1:], axis=0)
    rows, cols = np.where(np.isnan(out))
    out[rows, cols] = means[cols]
    return out


def global_feature_names() -> list[str]:
    """Names of the global descriptor vector, in order."""
    names = [f"mean_{p}" for p in ELEMENT_PROPERTIES] + [f"std_{p}" for p in ELEMENT_PROPERTIES]
    names += ["li_fraction", "n_elements", "anion_O", "anion_S", "anion_halogen", "anion_N", "anion_Se"]
    names += [f"system_{s}" for s in CRYSTAL_SYSTEMS] + ["spacegroup_over_230"]
    names += ["log_n_atoms", "a_sorted_0", "a_sorted_1", "a_sorted_2", "alpha", "beta", "gamma"]
    names += ["volume_per_atom"]
    names += [f"fraction_Z{z}" for z in range(1, MAX_Z + 1)]
    return names


def crystal_system_index(spacegroup: int) -> int:
    """0 (triclinic) .. 6 (cubic) for a space-group number 1..230."""
    if not 1 <= int(spacegroup) <= 230:
        raise InvalidInput(f"space-group number {spacegroup} is outside 1..230")
    return next(i for i, bound in enumerate(_SYSTEM_BOUNDS) if spacegroup <= bound)


def composition_descriptors(amounts: dict[int, float]) -> np.ndarray:
    """Fraction-weighted mean/std of elemental properties, Li fraction, anion fractions.

    Args:
        amounts: atomic number -> amount (any scale; normalized here).
    """
    zs = np.array(sorted(amounts), dtype=np.int64)
    if zs.size == 0 or zs.max() > MAX_Z or zs.min() < 1:
        raise InvalidInput(f"composition {amounts} has no element or an element beyond Z={MAX_Z}")
    w = np.array([amounts[z] for z in zs], dtype=np.float64)
    w = w / w.sum()
    props = element_properties()[zs]
    mean = (w[:, None] * props).sum(axis=0)
    std = np.sqrt((w[:, None] * (props - mean) ** 2).sum(axis=0))
    frac = dict(zip(zs.tolist(), w.tolist()))
    extra = [
        frac.get(3, 0.0),
        float(len(zs)),
        frac.get(8, 0.0),
        frac.get(16, 0.0),
        sum(frac.get(z, 0.0) for z in (9, 17, 35, 53)),
        frac.get(7, 0.0),
        frac.get(34, 0.0),
    ]
    return np.concatenate([mean, std, extra]).astype(np.float32)


def global_features(
    amounts: dict[int, float],
    spacegroup: int,
    n_atoms: float,
    lattice: tuple[float, float, float, float, float, float],
    volume: float,
) -> np.ndarray:
    """The global descriptor vector (see :func:`global_feature_names`).

    Args:
        amounts: atomic number -> amount.
        spacegroup: international number 1..230.
        n_atoms: atoms in the cell (occupancy-weighted).
        lattice: a, b, c (Å), alpha, beta, gamma (degrees).
        volume: cell volume, Å^3.
    """
    system = np.zeros(len(CRYSTAL_SYSTEMS), dtype=np.float32)
    system[crystal_system_index(spacegroup)] = 1.0
    a, b, c, alpha, beta, gamma = (float(x) for x in lattice)
    if not (n_atoms > 0 and volume > 0 and all(math.isfinite(x) for x in (a, b, c, alpha, beta, gamma))):
        raise InvalidInput(f"bad cell: n_atoms={n_atoms}, volume={volume}, lattice={lattice}")
    rest = [spacegroup / 230.0, math.log(n_atoms), *sorted((a, b, c)), alpha / 90, beta / 90, gamma / 90,
            volume / n_atoms]
    total = sum(amounts.values())
    fractions = np.zeros(MAX_Z, dtype=np.float32)
    for z, x in amounts.items():
        fractions[z - 1] = x / total
    return np.concatenate(
        [composition_descriptors(amounts), system, np.array(rest, np.float32), fractions]
    ).astype(np.float32)


def _cell_volume(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> float:
    ca, cb, cg = (math.cos(math.radians(x)) for x in (alpha, beta, gamma))
    return a * b * c * math.sqrt(max(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg, 0.0))


def obelix_composition(text: str):
    """pymatgen Composition of an OBELiX formula; hydrate ``*`` separators are dropped."""
    from htvs.formula import parse_composition

    return parse_composition(str(text).replace("*", ""))


def table_global_features(row) -> np.ndarray:
    """Global descriptors of an OBELiX table row (``Reduced Composition``/``True Composition``,
    ``Z``, ``Space group #``, ``a, b, c, alpha, beta, gamma``), for entries without a CIF."""
    comp = obelix_composition(row["Reduced Composition"])
    amounts = {el.Z: float(x) for el, x in comp.items()}
    try:
        n_atoms = float(obelix_composition(row["True Composition"]).num_atoms)
    except Exception:  # noqa: BLE001 - fall back to Z formula units
        n_atoms = float(comp.num_atoms) * float(row["Z"])
    lattice = tuple(float(row[k]) for k in ("a", "b", "c", "alpha", "beta", "gamma"))
    return global_features(amounts, int(row["Space group #"]), n_atoms, lattice, _cell_volume(*lattice))


def structure_spacegroup(structure, symprec: float = 0.1) -> int:
    """International space-group number of ``structure`` (1 when spglib finds none)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib fails on some disordered cells: treat as P1
        return 1


def structure_global_features(structure, symprec: float = 0.1) -> np.ndarray:
    """Global descriptors computed from a (possibly disordered) pymatgen Structure."""
    comp = structure.composition
    amounts = {el.Z: float(x) for el, x in comp.element_composition.items()}
    lat = structure.lattice
    return global_features(
        amounts,
        structure_spacegroup(structure, symprec),
        float(comp.num_atoms),
        (*lat.abc, *lat.angles),
        float(lat.volume),
    )


def site_features(structure) -> np.ndarray:
    """(n_sites, 201): occupancy-weighted species embeddings and the vacancy fraction."""
    table = element_embedding()
    out = np.zeros((len(structure), table.shape[1] + 1), dtype=np.float32)
    for i, site in enumerate(structure):
        total = 0.0
        for species, occupancy in site.species.items():
            z = species.Z if hasattr(species, "Z") else 0
            if not 1 <= z <= MAX_Z or not table[z].any():
                raise InvalidInput(f"site {i}: no embedding for species {species}")
            out[i, :-1] += float(occupancy) * table[z]
            total += float(occupancy)
        out[i, -1] = max(0.0, 1.0 - total)
    return out


def neighbor_edges(structure, cutoff: float, max_neighbors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``max_neighbors`` nearest periodic neighbours of every site within ``cutoff`` Å.

    Returns:
        (src, dst, distance): neighbour index, centre index, distance (Å).
    """
    center, neighbor, _, distance = structure.get_neighbor_list(r=cutoff)
    keep = distance > 1e-8
    center, neighbor, distance = center[keep], neighbor[keep], distance[keep]
    order = np.lexsort((distance, center))
    center, neighbor, distance = center[order], neighbor[order], distance[order]
    starts = np.searchsorted(center, center, side="left")
    rank = np.arange(center.size) - starts
    keep = rank < max_neighbors
    return (
        neighbor[keep].astype(np.int64),
        center[keep].astype(np.int64),
        distance[keep].astype(np.float32),
    )


def build_graph(structure, config: GraphConfig | None = None) -> CrystalGraph:
    """The crystal graph of a pymatgen Structure (ordered or disordered)."""
    config = config or GraphConfig()
    src, dst, dist = neighbor_edges(structure, config.cutoff, config.max_neighbors)
    return CrystalGraph(
        node_features=site_features(structure),
        edge_src=src,
        edge_dst=dst,
        edge_distance=dist,
        global_features=structure_global_features(structure, config.symprec),
    )


#: Names of the model's inputs, in ``forward`` order (also the ONNX graph's input names).
INPUT_NAMES = ("node_features", "node_graph", "edge_src", "edge_dst", "edge_distance", "global_features",
               "has_structure")


def collate_arrays(graphs: list[CrystalGraph | None], globals_: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Stack entries into the model's inputs as numpy arrays (keys: :data:`INPUT_NAMES`).

    ``graphs[i] is None`` marks an entry without a structure (it contributes no nodes).
    """
    nodes, node_graph, src, dst, dist = [], [], [], [], []
    offset = 0
    for i, graph in enumerate(graphs):
        if graph is None:
            continue
        n = graph.node_features.shape[0]
        nodes.append(graph.node_features)
        node_graph.append(np.full(n, i, dtype=np.int64))
        src.append(graph.edge_src + offset)
        dst.append(graph.edge_dst + offset)
        dist.append(graph.edge_distance)
        offset += n

    def cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype=dtype)

    return {
        "node_features": cat(nodes, (0, NODE_INPUT), np.float32),
        "node_graph": cat(node_graph, (0,), np.int64),
        "edge_src": cat(src, (0,), np.int64),
        "edge_dst": cat(dst, (0,), np.int64),
        "edge_distance": cat(dist, (0,), np.float32),
        "global_features": np.stack(globals_).astype(np.float32),
        "has_structure": np.array([g is not None for g in graphs], dtype=bool),
    }
