"""Typed loaders for the reference data bundled in ``htvs/data`` (see ``data/README.md``).

Nothing is read at import; every loader reads on first call and caches the result per process.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import re
import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from htvs.errors import DataNotFound

OBELIX_SPLITS = ("all", "train", "test")
MP_TABLES = (
    "mp_e_form",
    "mp_gap",
    "bartel_ef_train",
    "bartel_ef_val",
    "bartel_ef_test",
    "mp_e_hull_train",
    "mp_e_hull_val",
    "mp_e_hull_test",
)


def data_path(relative: str) -> Path:
    """Absolute path of a bundled data file, e.g. ``data_path("mp/mp_e_form.csv.gz")``."""
    path = Path(str(resources.files("htvs") / "data" / relative))
    if not path.is_file():
        raise DataNotFound(f"bundled data file {relative!r} not found at {path}")
    return path


@functools.cache
def element_embedding_table(name: str = "matscholar200") -> dict[str, list[float]]:
    """Element symbol -> vector of aviary's element embedding ``name`` (read-only, cached).

    matscholar200, the one the shipped models use, is bundled (``data/embeddings/``) so that
    serving the composition and conductivity models needs neither aviary nor torch; any other
    name is read from the installed aviary package (the ``train`` extra).
    """
    bundled = Path(str(resources.files("htvs") / "data" / "embeddings" / f"{name}.json.gz"))
    if bundled.is_file():
        with gzip.open(bundled, "rt", encoding="utf-8") as handle:
            return json.load(handle)
    from htvs.extras import require_extra

    aviary = require_extra("aviary", "train", f"the {name} element embedding")
    path = resources.files(aviary) / "embeddings" / "element" / f"{name}.json"
    with path.open("r", encoding="utf-8") as handle:
        return json.load(handle)


_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def _reduce_formulas(formulas: pd.Series) -> pd.Series:
    """pymatgen reduced formulas of simple integer formulas ("Li2O1"), vectorized.

    Formulas that are not plain element/integer sequences go through pymatgen one by one.
    """
    from pymatgen.core import Composition, Element

    from htvs.substitution.formula_strings import reduced_formula_strings

    symbols = tuple(el.symbol for el in Element)
    index_of = {s: i for i, s in enumerate(symbols)}
    parsed: list[list[tuple[int, int]] | None] = []
    for text in formulas.tolist():
        tokens = _TOKEN.findall(text)
        if "".join(a + b for a, b in tokens) != text or any(a not in index_of for a, _ in tokens):
            parsed.append(None)
            continue
        amounts: dict[int, int] = {}
        for symbol, digits in tokens:
            amounts[index_of[symbol]] = amounts.get(index_of[symbol], 0) + (int(digits) if digits else 1)
        parsed.append(list(amounts.items()))
    width = max((len(p) for p in parsed if p), default=1)
    element_index = np.zeros((len(parsed), width), dtype=np.int64)
    amount = np.zeros((len(parsed), width), dtype=np.int64)
    for row, pairs in enumerate(parsed):
        for col, (element, count) in enumerate(pairs or []):
            element_index[row, col] = element
            amount[row, col] = count
    reduced = reduced_formula_strings(element_index, amount, symbols)
    for row, pairs in enumerate(parsed):
        if pairs is None:
            reduced[row] = Composition(formulas.iloc[row]).reduced_formula
    return pd.Series(reduced, index=formulas.index, dtype=object)


def load_formula_table(name: str) -> pd.DataFrame:
    """One of the bundled ``formula,target`` tables (``MP_TABLES`` or ``"expt_gap"``), as shipped.

    Returns:
        DataFrame with columns ``formula`` (str, as in the source) and ``target`` (float64;
        eV/atom for formation energies and hull distances, eV for band gaps).
    """
    if name == "expt_gap":
        rel = "expt/expt_gap.csv.gz"
    elif name in MP_TABLES:
        rel = f"mp/{name}.csv.gz"
    else:
        raise DataNotFound(f"unknown formula table {name!r}; choose from {[*MP_TABLES, 'expt_gap']}")
    frame = pd.read_csv(data_path(rel), dtype={"formula": str, "target": np.float64})
    return frame.loc[:, ["formula", "target"]]


#: The lowest E_f per reduced formula of ``mp/mp_e_form.csv.gz``, precomputed: reducing its
#: 132,752 formulas takes 2-3 s, which every single-formula command paid at start-up.
MP_E_FORM_LOWEST = "mp/mp_e_form_lowest.csv.gz"


def derive_mp_formation_energies() -> pd.DataFrame:
    """Reduce matbench ``mp_e_form`` to the lowest E_f per pymatgen reduced formula (slow, ~3 s).

    This is how :data:`MP_E_FORM_LOWEST` is made (:func:`write_mp_formation_energies`); a test
    checks that the bundled file equals it.
    """
    raw = load_formula_table("mp_e_form")
    raw["formula"] = _reduce_formulas(raw["formula"])
    lowest = raw.groupby("formula", sort=True)["target"].min().reset_index()
    return lowest.rename(columns={"target": "e_form_ev_per_atom"})


def write_mp_formation_energies(path: Path) -> None:
    """Write :func:`derive_mp_formation_energies` to ``path`` (gzip CSV, full float precision)."""
    from htvs.atomic import write_bytes_atomic

    text = derive_mp_formation_energies().to_csv(index=False, float_format="%.17g")
    write_bytes_atomic(path, gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


@functools.cache
def load_mp_formation_energies() -> pd.DataFrame:
    """Lowest MP formation energy per reduced formula (matbench ``mp_e_form``, MP v2018.10).

    Read from the precomputed :data:`MP_E_FORM_LOWEST` (0.1 s instead of ~3 s).

    Returns:
        DataFrame sorted by formula with columns ``formula`` (pymatgen reduced formula, unique)
        and ``e_form_ev_per_atom`` (float64, eV/atom, the lowest over polymorphs).
    """
    # keep_default_na=False: "NaN" (sodium nitride) is a formula, not a missing value
    return pd.read_csv(
        data_path(MP_E_FORM_LOWEST),
        dtype={"formula": str, "e_form_ev_per_atom": np.float64},
        keep_default_na=False,
    )


@functools.cache
def reference_elements() -> frozenset[str]:
    """Symbols of the 89 elements with an MP ground-state reference entry (2023-02-07)."""
    with gzip.open(data_path("mp/mp_elemental_reference_entries_2023-02-07.json.gz"), "rt") as fh:
        entries = json.load(fh)
    return frozenset(entries.keys() if isinstance(entries, dict) else (e["composition"] for e in entries))


def _parse_conductivity(text: object) -> tuple[float, bool]:
    """OBELiX conductivity cell -> (S/cm, censored). ``"<1E-10"`` is an upper bound."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return float("nan"), False
    raw = str(text).strip()
    if raw.startswith("<"):
        return float(raw[1:]), True
    return float(raw), False


@functools.cache
def load_obelix(split: str = "all") -> pd.DataFrame:
    """The OBELiX table (Therrien et al. 2026, CC BY 4.0) for ``split`` in ``OBELIX_SPLITS``.

    Adds ``sigma_s_cm`` (float, S/cm; for censored rows the bound), ``sigma_censored`` (bool)
    and ``log10_sigma`` to the source columns.
    """
    if split not in OBELIX_SPLITS:
        raise DataNotFound(f"unknown OBELiX split {split!r}; choose from {OBELIX_SPLITS}")
    frame = pd.read_csv(data_path(f"obelix/{split}.csv.gz"), dtype={"ID": str})
    parsed = frame["Ionic conductivity (S cm-1)"].map(_parse_conductivity)
    frame["sigma_s_cm"] = [value for value, _ in parsed]
    frame["sigma_censored"] = [flag for _, flag in parsed]
    frame["log10_sigma"] = np.log10(frame["sigma_s_cm"].astype(float))
    return frame


@dataclass(frozen=True)
class CifText:
    """A CIF file's text with its identifier (the OBELiX entry ``ID``)."""

    id: str
    text: str


@functools.cache
def load_obelix_cifs() -> tuple[CifText, ...]:
    """All 321 OBELiX CIFs, sorted by ID, read from the bundled tarball."""
    out: list[CifText] = []
    with tarfile.open(data_path("obelix/all_cifs.tar.gz"), "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.endswith(".cif"):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            text = io.TextIOWrapper(handle, encoding="utf-8", errors="replace").read()
            out.append(CifText(id=Path(member.name).stem, text=text))
    return tuple(sorted(out, key=lambda c: c.id))


# --------------------------------------------------------------------------- MP structures

#: The Li-containing subset of the 2018 MP structure snapshot, shipped inside the package.
MP_LI_STRUCTURES = "mp_structures/mp_li_structures.jsonl.gz"
#: The full 36,737-structure snapshot: in the repository's ``data/`` folder, not in the wheel.
MP_ALL_STRUCTURES = "mp_structures/mp_structures.jsonl.gz"
#: Environment variable naming a folder that holds ``mp_structures/mp_structures.jsonl.gz``.
DATA_DIR_ENV = "HTVS_DATA_DIR"


@dataclass(frozen=True)
class MPStructureRecord:
    """One Materials Project structure of the 2018 snapshot used by CGCNN (Xie & Grossman 2018).

    Attributes:
        material_id: the MP id, e.g. ``"mp-1001079"``.
        formula_sum: the cell contents as MP writes them, e.g. ``"Li2 C4 N4"``.
        formation_energy_per_atom: eV/atom, MP legacy corrections (2018).
        band_gap: PBE band gap, eV.
        cif: the ordered structure as a pymatgen-written CIF (P1).
    """

    material_id: str
    formula_sum: str
    formation_energy_per_atom: float
    band_gap: float
    cif: str

    def element_counts(self) -> dict[str, int]:
        """Element symbol -> atoms in the cell, read from ``formula_sum`` (no CIF parse)."""
        counts: dict[str, int] = {}
        for token in self.formula_sum.split():
            match = _SUM_TOKEN.fullmatch(token)
            if match is None:
                raise DataNotFound(f"{self.material_id}: unreadable formula_sum token {token!r}")
            symbol, digits = match.groups()
            counts[symbol] = counts.get(symbol, 0) + (int(digits) if digits else 1)
        return counts


_SUM_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def read_mp_structures(path: Path | str) -> tuple[MPStructureRecord, ...]:
    """Every record of an MP-snapshot JSON-lines file (gzipped), in file order.

    Raises:
        DataNotFound: the file is missing, or a line is not a record (the message names the
            line number and the missing field).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFound(f"MP structure file {str(path)!r} not found")
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(
                    MPStructureRecord(
                        material_id=str(row["material_id"]),
                        formula_sum=str(row["formula_sum"]),
                        formation_energy_per_atom=float(row["formation_energy_per_atom"]),
                        band_gap=float(row["band_gap"]),
                        cif=str(row["cif"]),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataNotFound(f"{path.name} line {number} is not an MP structure record: {e!r}") from e
    return tuple(out)


@functools.cache
def load_mp_li_structures() -> tuple[MPStructureRecord, ...]:
    """The 5,255 Li-containing structures of the 2018 MP snapshot (bundled in the package)."""
    return read_mp_structures(data_path(MP_LI_STRUCTURES))


def mp_structures_path(data_dir: Path | str | None = None) -> Path:
    """Where the full 36,737-structure MP snapshot is: ``data_dir``, else ``$HTVS_DATA_DIR``,
    else the ``data/`` folder of the source checkout htvs is installed from (editable install).

    The file is training data, not part of the installed wheel.

    Raises:
        DataNotFound: it is not there (the message names the path).
    """
    from htvs.settings import Settings

    folder = Path(data_dir) if data_dir is not None else Settings.from_env().data_dir
    path = (folder or Path(__file__).resolve().parents[2] / "data") / MP_ALL_STRUCTURES
    if not path.is_file():
        raise DataNotFound(
            f"the full MP structure snapshot is not at {path}; it ships in the repository's data/ folder "
            f"(not in the wheel): run from a source checkout or set {DATA_DIR_ENV}"
        )
    return path


def load_mp_structures(data_dir: Path | str | None = None) -> tuple[MPStructureRecord, ...]:
    """All 36,737 structures of the 2018 MP snapshot (see :func:`mp_structures_path`)."""
    return read_mp_structures(mp_structures_path(data_dir))
