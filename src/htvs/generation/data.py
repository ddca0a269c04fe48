"""perov_5 crystals as arrays (lattice in Å, fractional coordinates, atomic numbers) for stage 5.

The bundled files ``htvs/data/perov_5/{val,test}.npz.gz`` were built from the CDVAE/DiffCSP
benchmark CSVs by :func:`build_bundle`; the train split is not available in this workspace, so
the generator is trained on ``val`` and evaluated on ``test``.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from htvs.errors import DataNotFound, InvalidInput

SPLITS = ("val", "test")


@dataclass(frozen=True)
class CrystalArrays:
    """A set of periodic crystals stored flat.

    Attributes:
        lattice: ``[n_crystals, 3, 3]`` lattice vectors as rows, Å.
        frac: ``[n_atoms_total, 3]`` fractional coordinates in [0, 1).
        atomic_numbers: ``[n_atoms_total]`` atomic numbers.
        num_atoms: ``[n_crystals]`` atoms per crystal (the flat arrays are in crystal order).
    """

    lattice: np.ndarray
    frac: np.ndarray
    atomic_numbers: np.ndarray
    num_atoms: np.ndarray

    def __post_init__(self) -> None:
        if int(self.num_atoms.sum()) != len(self.frac) or len(self.frac) != len(self.atomic_numbers):
            raise InvalidInput("num_atoms does not match the flat atom arrays")

    def __len__(self) -> int:
        return len(self.num_atoms)

    @property
    def offsets(self) -> np.ndarray:
        """Index of each crystal's first atom in the flat arrays."""
        return np.concatenate([[0], np.cumsum(self.num_atoms)[:-1]]).astype(np.int64)

    def subset(self, indices: np.ndarray) -> CrystalArrays:
        """The crystals at ``indices`` (in that order)."""
        starts, counts = self.offsets[indices], self.num_atoms[indices]
        atoms = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)])
        return CrystalArrays(self.lattice[indices], self.frac[atoms], self.atomic_numbers[atoms], counts.copy())

    def structure(self, index: int):
        """Crystal ``index`` as a pymatgen Structure."""
        from pymatgen.core import Lattice, Structure

        start, count = int(self.offsets[index]), int(self.num_atoms[index])
        return Structure(
            Lattice(self.lattice[index].astype(np.float64)),
            [int(z) for z in self.atomic_numbers[start : start + count]],
            self.frac[start : start + count].astype(np.float64),
        )

    def volume_per_atom(self) -> np.ndarray:
        """Cell volume per atom of every crystal, Å^3."""
        return np.abs(np.linalg.det(self.lattice.astype(np.float64))) / self.num_atoms


def crystals_from_structures(structures: list) -> CrystalArrays:
    """Arrays of pymatgen structures, lattice re-oriented from its lengths and angles (as DiffCSP)."""
    from pymatgen.core import Lattice

    lattices, fracs, numbers, counts = [], [], [], []
    for s in structures:
        lat = Lattice.from_parameters(*s.lattice.abc, *s.lattice.angles)
        lattices.append(lat.matrix)
        fracs.append(np.mod(s.frac_coords, 1.0))
        numbers.append([site.specie.Z for site in s])
        counts.append(len(s))
    return CrystalArrays(
        np.asarray(lattices, dtype=np.float32),
        np.concatenate(fracs).astype(np.float32),
        np.concatenate(numbers).astype(np.uint8),
        np.asarray(counts, dtype=np.int64),
    )


def read_benchmark_csv(path: str | Path) -> CrystalArrays:
    """Parse a CDVAE/DiffCSP benchmark CSV (column ``cif``) into arrays."""
    import pandas as pd

    from htvs.prototypes.readers import parse_cif

    frame = pd.read_csv(path)
    if "cif" not in frame.columns:
        raise InvalidInput(f"{path} has no 'cif' column")
    return crystals_from_structures([parse_cif(text)[0] for text in frame["cif"]])


def save_crystals(crystals: CrystalArrays, path: str | Path) -> None:
    """Write ``crystals`` as a gzip-compressed ``.npz`` (no pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, lattice=crystals.lattice, frac=crystals.frac,
             atomic_numbers=crystals.atomic_numbers, num_atoms=crystals.num_atoms)
    Path(path).write_bytes(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))


def load_crystals(path: str | Path) -> CrystalArrays:
    """Read a file written by :func:`save_crystals`."""
    path = Path(path)
    if not path.exists():
        raise DataNotFound(f"crystal file {path} does not exist")
    with np.load(io.BytesIO(gzip.decompress(path.read_bytes())), allow_pickle=False) as data:
        return CrystalArrays(data["lattice"], data["frac"], data["atomic_numbers"], data["num_atoms"])


def load_perov5(split: str) -> CrystalArrays:
    """The bundled perov_5 split ``'val'`` (our training set) or ``'test'``."""
    if split not in SPLITS:
        raise InvalidInput(f"perov_5 split must be one of {SPLITS}, got {split!r} (train is not bundled)")
    with resources.as_file(resources.files("htvs") / "data" / "perov_5" / f"{split}.npz.gz") as path:
        return load_crystals(path)


def build_bundle(source_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Convert ``source_dir/{val,test}.csv.gz`` to ``out_dir/{val,test}.npz.gz``; returns counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        crystals = read_benchmark_csv(Path(source_dir) / f"{split}.csv.gz")
        save_crystals(crystals, out / f"{split}.npz.gz")
        counts[split] = len(crystals)
    return counts
