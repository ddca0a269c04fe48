"""The rows of the report's candidate table (one per shortlisted structure), like the paper's
table of candidates: formula, prototype and space group, origin, window and decomposition
products, E_hull predicted and relaxed, band gap, σ(300 K) range, synthesizability and flags.

Sources: ``structure_candidates.csv`` (the shortlist with its formula's screen values; without
it, the shortlisted rows of ``conductivity.parquet``), ``structures.parquet`` (CIF), ``relax.parquet``
(E_hull after the relax step), ``validation.parquet`` / ``validation.json`` (stage 7), and the
reference hull (products at the window limits of the predicted E_f).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from htvs.report.inputs import CampaignOutput

#: Columns that may hold the formula as the user wrote it (first present wins).
WRITTEN_FORMULA_COLUMNS = ("formula_as_written", "formula_written", "input_formula")


@dataclass
class CandidateRow:
    """One shortlisted structure, every value in the units of the report's headers."""

    rank: int
    id: str
    formula: str
    formula_as_written: str | None = None
    prototype_id: str | None = None
    space_group: str | None = None
    origin: str | None = None
    phi_red_v: float | None = None
    phi_ox_v: float | None = None
    window_source: str = "predicted"
    reduction_products: tuple[str, ...] = ()
    oxidation_products: tuple[str, ...] = ()
    decomposition: tuple[str, ...] = ()
    e_hull_predicted: float | None = None
    e_hull_relaxed: float | None = None
    e_hull_relaxed_source: str | None = None
    band_gap_ev: float | None = None
    band_gap_std_ev: float | None = None
    p_superionic: float | None = None
    sigma_low_mS_cm: float | None = None
    sigma_high_mS_cm: float | None = None
    sigma_mean_mS_cm: float | None = None
    sigma_source: str = "predicted"
    clscore: float | None = None
    charge_balanced: bool | None = None
    flags: list[str] = field(default_factory=list)
    validated: bool = False
    cif: str | None = None
    cif_link: str | None = None


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing, NaN or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text or None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return None


def shortlist_frame(output: CampaignOutput) -> pd.DataFrame:
    """The shortlisted structures, best first (``structure_candidates.csv`` when present)."""
    if output.shortlist is not None:
        return output.shortlist.reset_index(drop=True)
    if output.conductivity is not None and "shortlisted" in output.conductivity:
        return output.conductivity[output.conductivity["shortlisted"].fillna(False).astype(bool)].reset_index(drop=True)
    return pd.DataFrame(columns=["id", "formula", "p_superionic"])


def validation_flags(document: dict[str, Any] | None, row: dict[str, Any] | None) -> list[str]:
    """The validation flags' reasons (``flags`` of validation.json, else validation.parquet's
    ``flags`` string joined by '; '); the error when validation failed."""
    reasons: list[str] = []
    flags = (document or {}).get("flags")
    if isinstance(flags, list):
        for flag in flags:
            if isinstance(flag, dict):
                reasons.append(str(flag.get("reason") or flag.get("code") or flag))
            else:
                reasons.append(str(flag))
    elif row is not None and _text(row.get("flags")):
        reasons += [part.strip() for part in str(row["flags"]).split(";") if part.strip()]
    error = _text((row or {}).get("error")) or _text((document or {}).get("error"))
    if error:
        reasons.insert(0, f"validation failed: {error}")
    return reasons


def _space_group(info: dict[str, Any]) -> str | None:
    """``Pnma (62)`` of a ``structures.parquet`` row's structure (spglib, symprec 0.1 Å), from its
    stored arrays (its CIF when they are absent); None when it cannot be read."""
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        if info.get("lattice_matrix") is not None and info.get("species") is not None:
            from htvs.structures.parallel import structure_from_arrays

            structure = structure_from_arrays(info["lattice_matrix"], info["species"], info["frac_coords"])
        elif isinstance(info.get("cif"), str):
            from htvs.prototypes.readers import parse_cif

            structures = parse_cif(info["cif"])
            if len(structures) != 1:
                return None
            structure = structures[0]
        else:
            return None
        analyzer = SpacegroupAnalyzer(structure, symprec=0.1)
        return f"{analyzer.get_space_group_symbol()} ({analyzer.get_space_group_number()})"
    except Exception:  # noqa: BLE001 - a structure spglib cannot analyse just shows no space group
        return None


def _window_products(rows: list[CandidateRow], e_forms: dict[str, float | None]) -> None:
    """Fill the products at the predicted window's limits (reference hull, the formula's
    predicted E_f inserted when below the hull)."""
    formulas = sorted({r.formula for r in rows if r.window_source == "predicted"})
    if not formulas:
        return
    from htvs.errors import RowError
    from htvs.thermo import ReferenceHull, electrochemical_windows

    hull = ReferenceHull.bundled()
    results = electrochemical_windows(hull, formulas, [e_forms.get(f) for f in formulas])
    by_formula = {f: r for f, r in zip(formulas, results, strict=True) if not isinstance(r, RowError)}
    for row in rows:
        result = by_formula.get(row.formula)
        if result is not None and row.window_source == "predicted":
            row.reduction_products = tuple(result.reduction_products)
            row.oxidation_products = tuple(result.oxidation_products)


def candidate_rows(output: CampaignOutput, window_products: bool = True) -> list[CandidateRow]:
    """One :class:`CandidateRow` per shortlisted structure, in shortlist order.

    Args:
        output: the campaign output folder, read.
        window_products: compute the phases at the predicted window's limits (loads the
            reference hull, a few seconds).
    """
    frame = shortlist_frame(output)
    cifs: dict[str, str] = {}
    structure_info: dict[str, dict] = {}
    if output.structures is not None:
        table = output.structures[output.structures["cif"].notna()]
        cifs = dict(zip(table["id"].astype(str), table["cif"], strict=True))
        structure_info = table.set_index(table["id"].astype(str)).to_dict("index")
    relaxed: dict[str, float] = {}
    if output.relax is not None and len(output.relax):
        ok = output.relax["error"].isna() if "error" in output.relax else pd.Series(True, index=output.relax.index)
        for row_id, e_hull in zip(output.relax.loc[ok, "id"].astype(str), output.relax.loc[ok, "e_above_hull"],
                                  strict=True):
            if finite(e_hull) is not None:
                relaxed[row_id] = float(e_hull)
    validation_rows: dict[str, dict] = {}
    if output.validation is not None:
        validation_rows = {str(r["id"]): r for r in output.validation.to_dict("records")}
    documents = {str(d.get("id")): d for d in output.documents}
    written_column = next((c for c in WRITTEN_FORMULA_COLUMNS if c in frame.columns), None)
    screen_written: dict[str, str] = {}
    if written_column is None and output.screen is not None:
        column = next((c for c in WRITTEN_FORMULA_COLUMNS if c in output.screen.columns), None)
        if column is not None:
            screen_written = dict(zip(output.screen["formula"], output.screen[column], strict=True))
    rows: list[CandidateRow] = []
    e_forms: dict[str, float | None] = {}
    for rank, record in enumerate(frame.to_dict("records"), start=1):
        row_id = str(record["id"])
        info = structure_info.get(row_id, {})
        formula = str(record["formula"])
        row = CandidateRow(rank=rank, id=row_id, formula=formula)
        written = record.get(written_column) if written_column else screen_written.get(formula)
        row.formula_as_written = _text(written)
        row.prototype_id = _text(record.get("prototype_id")) or _text(info.get("prototype_id"))
        row.origin = _text(record.get("origin")) or _text(info.get("origin"))
        row.cif = cifs.get(row_id)
        row.space_group = _space_group(info)
        row.phi_red_v, row.phi_ox_v = finite(record.get("phi_red")), finite(record.get("phi_ox"))
        row.e_hull_predicted = finite(record.get("e_above_hull"))
        row.band_gap_ev, row.band_gap_std_ev = finite(record.get("band_gap_mean")), finite(record.get("band_gap_std"))
        row.p_superionic = finite(record.get("p_superionic"))
        mean, std = finite(record.get("log10_sigma_mean")), finite(record.get("log10_sigma_std"))
        if mean is not None:
            row.sigma_mean_mS_cm = 10.0 ** (mean + 3.0)
            spread = std or 0.0
            row.sigma_low_mS_cm, row.sigma_high_mS_cm = 10.0 ** (mean - spread + 3.0), 10.0 ** (mean + spread + 3.0)
        row.clscore = finite(record.get("clscore"))
        row.charge_balanced = _bool(record.get("charge_balanced")) if "charge_balanced" in record else None
        e_forms[formula] = finite(record.get("e_form_mean"))
        if row_id in relaxed:
            row.e_hull_relaxed, row.e_hull_relaxed_source = relaxed[row_id], "relax step (CHGNet hull)"
        validation, document = validation_rows.get(row_id), documents.get(row_id)
        if validation is not None or document is not None:
            row.flags = validation_flags(document, validation)
            merged = {**(document or {}), **{k: v for k, v in (validation or {}).items() if v is not None}}
            ok = not _text(merged.get("error"))
            row.validated = ok
            if ok:
                row.e_hull_relaxed = finite(merged.get("e_above_hull"))
                row.e_hull_relaxed_source = "stage 7 (relaxed, reference hull)"
                if finite(merged.get("phi_ox")) is not None:
                    row.phi_red_v, row.phi_ox_v = finite(merged.get("phi_red")), finite(merged.get("phi_ox"))
                    row.window_source = "relaxed"
                row.decomposition = tuple(
                    f"{d.get('formula')} ({finite(d.get('fraction')) or 0:.2f})"
                    for d in (document or {}).get("decomposition") or [] if isinstance(d, dict)
                )
                sigma = (document or {}).get("sigma_300K_mS_cm") or {}
                low = finite(merged.get("sigma_300K_low_mS_cm")) or finite(sigma.get("low"))
                high = finite(merged.get("sigma_300K_high_mS_cm")) or finite(sigma.get("high"))
                center = finite(sigma.get("mean")) or finite(merged.get("sigma_300K_mS_cm"))
                if low is not None and high is not None:
                    row.sigma_low_mS_cm, row.sigma_high_mS_cm, row.sigma_mean_mS_cm = low, high, center
                    row.sigma_source = "MD"
                if row.clscore is None:
                    row.clscore = finite(merged.get("clscore"))
        else:
            row.flags = ["not validated"]
        if row.charge_balanced is False:
            row.flags.append("not charge balanced")
        rows.append(row)
    if window_products and rows:
        _window_products(rows, e_forms)
    return rows


def decomposition_text(document: dict[str, Any]) -> str:
    """``P2S7 (0.50), SCl (0.29)`` from a validation document's ``decomposition``."""
    parts = document.get("decomposition") or []
    return ", ".join(f"{p.get('formula')} ({finite(p.get('fraction')) or 0:.2f})" for p in parts if isinstance(p, dict))


def msd_curves(document: dict[str, Any], row: dict[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """The recorded Li MSD curves of a validated structure (validation.json ``msd_curves``, else
    validation.parquet ``msd_curves_json``), or None when the run did not record them."""
    curves = document.get("msd_curves")
    if not curves and row is not None and _text(row.get("msd_curves_json")):
        try:
            curves = json.loads(row["msd_curves_json"])
        except ValueError:
            curves = None
    return curves if isinstance(curves, dict) and curves else None
