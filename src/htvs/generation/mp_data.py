"""An MP-20-like crystal set for stage 5: Materials Project structures of at most 20 sites.

Built by :func:`build_mp20_bundle` from the 2018 MP snapshot used by CGCNN (Xie & Grossman,
PRL 2018; 36,737 structures, Materials Project data under CC BY 4.0), keeping the 19,619
ordered structures with <= 20 sites. How it differs from MP-20 (Xie et al., ICLR 2022, used by
CDVAE and DiffCSP): an older snapshot (2018, not 2021), no E_hull <= 0.08 eV/atom cut, and a
split that keeps every polymorph of a composition in the same part.

The split is fixed by a seed: the distinct reduced formulas, sorted, are permuted by
``numpy.random.default_rng(seed)`` and dealt 60/20/20 into train/val/test (MP-20's proportions),
so that no composition of the test part has a polymorph in training (random per-structure
splits let a model "predict" a test structure by recalling its training polymorph).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np

from htvs.errors import DataNotFound, InvalidInput
from htvs.generation.data import CrystalArrays, crystals_from_structures, load_crystals, save_crystals

SPLITS = ("train", "val", "test")
FRACTIONS = (0.6, 0.2, 0.2)
MAX_SITES = 20
SPLIT_SEED = 0
IDS_FILE = "ids.json.gz"
SOURCE = ("Materials Project structures of <= 20 sites from the 2018 snapshot used by CGCNN "
          "(Xie & Grossman, PRL 2018); MP data CC BY 4.0")


def bundle_dir() -> Path:
    return Path(str(resources.files("htvs") / "data" / "mp20like"))


def split_formulas(reduced_formulas: list[str], seed: int = SPLIT_SEED) -> dict[str, str]:
    """Part (``train``/``val``/``test``) of each distinct reduced formula, 60/20/20 by ``seed``."""
    distinct = sorted(set(reduced_formulas))
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_train = int(round(FRACTIONS[0] * len(distinct)))
    n_val = int(round(FRACTIONS[1] * len(distinct)))
    part = {}
    for rank, index in enumerate(order):
        part[distinct[index]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return part


def build_mp20_bundle(
    source: str | Path | None = None, out_dir: str | Path | None = None, seed: int = SPLIT_SEED,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Parse ``mp_structures.jsonl.gz`` (default: :func:`htvs.datasets.mp_structures_path`) into
    ``out_dir/{train,val,test}.npz.gz`` + ``ids.json.gz`` (default: the bundled folder).

    Structures that do not parse, are disordered or have more than 20 sites are left out.
    Returns the number of crystals per part.
    """
    from htvs.prototypes.readers import parse_cif

    from htvs.datasets import mp_structures_path

    source = Path(source) if source is not None else mp_structures_path()
    if not source.exists():
        raise DataNotFound(f"MP structure file {source} does not exist")
    entries = []
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            record = json.loads(line)
            try:
                structure = parse_cif(record["cif"], max_sites=MAX_SITES)[0]
            except Exception:  # noqa: BLE001 - a structure that does not parse is left out
                continue
            if len(structure) <= MAX_SITES and structure.is_ordered:
                entries.append((record["material_id"], structure.composition.reduced_formula, structure))
            if progress is not None and number % 1000 == 0:
                progress(number)
    part = split_formulas([formula for _, formula, _ in entries], seed)
    out = Path(out_dir) if out_dir is not None else bundle_dir()
    out.mkdir(parents=True, exist_ok=True)
    ids, counts = {}, {}
    for name in SPLITS:
        chosen = [(mid, s) for mid, formula, s in entries if part[formula] == name]
        save_crystals(crystals_from_structures([s for _, s in chosen]), out / f"{name}.npz.gz")
        ids[name] = [mid for mid, _ in chosen]
        counts[name] = len(chosen)
    meta = {"source": SOURCE, "split_seed": seed, "fractions": FRACTIONS, "max_sites": MAX_SITES, "ids": ids}
    (out / IDS_FILE).write_bytes(gzip.compress(json.dumps(meta).encode(), compresslevel=9, mtime=0))
    return counts


def load_mp20(split: str, directory: str | Path | None = None) -> CrystalArrays:
    """The bundled MP-20-like part ``'train'``, ``'val'`` or ``'test'``."""
    if split not in SPLITS:
        raise InvalidInput(f"MP-20-like split must be one of {SPLITS}, got {split!r}")
    return load_crystals((Path(directory) if directory is not None else bundle_dir()) / f"{split}.npz.gz")


def material_ids(split: str, directory: str | Path | None = None) -> list[str]:
    """Materials Project ids of the crystals of ``split``, in the order of :func:`load_mp20`."""
    path = (Path(directory) if directory is not None else bundle_dir()) / IDS_FILE
    if not path.exists():
        raise DataNotFound(f"{path} does not exist")
    return json.loads(gzip.decompress(path.read_bytes()))["ids"][split]


def li_ternary_quaternary(crystals: CrystalArrays) -> np.ndarray:
    """Indices of the crystals that contain Li and have 3 or 4 elements (the paper's prototype kinds)."""
    chosen = []
    for index, (start, count) in enumerate(zip(crystals.offsets, crystals.num_atoms)):
        elements = set(crystals.atomic_numbers[start : start + count].tolist())
        if 3 in elements and len(elements) in (3, 4):
            chosen.append(index)
    return np.asarray(chosen, dtype=np.int64)
