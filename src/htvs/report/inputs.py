"""Read a campaign's ``--out`` folder for the report, with one clear error per bad file.

Only ``funnel.json`` is required; every other table is optional (a campaign stopped early, a
step turned off) and read when present. A file that is present but unreadable, or lacks the
columns the report needs, raises :class:`~htvs.errors.InvalidInput` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from htvs.campaign.plots import _read_parquet
from htvs.errors import InvalidInput

#: The file :func:`htvs.report.metadata.record_run` writes beside the tables.
RUN_FILE = "run.json"


@dataclass
class CampaignOutput:
    """The parts of a campaign output folder the report reads (None / empty when absent)."""

    folder: Path
    funnel: dict[str, Any]
    run: dict[str, Any] | None = None
    predictions: pd.DataFrame | None = None
    screen: pd.DataFrame | None = None
    structures: pd.DataFrame | None = None
    relax: pd.DataFrame | None = None
    conductivity: pd.DataFrame | None = None
    shortlist: pd.DataFrame | None = None
    validation: pd.DataFrame | None = None
    documents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any] | None:
        """The campaign config recorded with the run (``run.json``), or None."""
        return (self.run or {}).get("config")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{path}: not readable JSON ({exc})") from exc


def _optional_parquet(path: Path, columns: list[str], wanted: list[str] | None = None) -> pd.DataFrame | None:
    """The table at ``path`` (only ``wanted`` columns when given and present), or None when absent."""
    if not path.is_file():
        return None
    frame = _read_parquet(path, columns)
    if wanted is not None:
        frame = frame[[c for c in wanted if c in frame.columns]]
    return frame


def _optional_csv(path: Path, columns: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=columns)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise InvalidInput(f"{path}: not a readable CSV table ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def read_campaign_output(folder: str | Path) -> CampaignOutput:
    """Read ``folder`` (the ``--out`` folder of ``htvs campaign run``).

    Raises:
        InvalidInput: no such folder, no ``funnel.json``, or a file that is present but
            unreadable or lacks a needed column (the message names the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInput(f"{folder}: no such folder; pass the --out folder of `htvs campaign run`")
    funnel_path = folder / "funnel.json"
    if not funnel_path.is_file():
        raise InvalidInput(f"{folder}: no funnel.json here; pass the --out folder of `htvs campaign run`")
    funnel = _json(funnel_path)
    if not isinstance(funnel, dict) or not all(isinstance(v, int | float) for v in funnel.values()):
        raise InvalidInput(f"{funnel_path}: expected an object of step -> count")
    out = CampaignOutput(folder=folder, funnel=funnel)
    run_path = folder / RUN_FILE
    if run_path.is_file():
        run = _json(run_path)
        if not isinstance(run, dict):
            raise InvalidInput(f"{run_path}: expected a JSON object")
        out.run = run
    out.predictions = _optional_parquet(folder / "predictions.parquet", ["formula", "band_gap_mean"])
    out.screen = _optional_parquet(folder / "screen.parquet", ["formula", "e_above_hull", "phi_ox", "passed"])
    out.structures = _optional_parquet(folder / "structures.parquet", ["id", "cif"],
                                       ["id", "formula", "prototype_id", "origin", "cif", "lattice_matrix", "species",
                                        "frac_coords"])
    out.relax = _optional_parquet(folder / "relax.parquet", ["id", "e_above_hull"])
    out.conductivity = _optional_parquet(folder / "conductivity.parquet",
                                         ["id", "formula", "log10_sigma_mean", "p_superionic"])
    out.shortlist = _optional_csv(folder / "structure_candidates.csv", ["id", "formula", "p_superionic"])
    out.validation = _optional_parquet(folder / "validation.parquet", ["id"])
    documents_path = folder / "validation.json"
    if documents_path.is_file():
        documents = _json(documents_path)
        if not isinstance(documents, list) or not all(isinstance(d, dict) for d in documents):
            raise InvalidInput(f"{documents_path}: expected a list of objects (one per validated structure)")
        out.documents = documents
    return out
