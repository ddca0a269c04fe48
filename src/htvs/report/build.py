"""Assemble ``report.html`` from a campaign's output folder (``htvs campaign report DIR``), and
the hook the campaign runner calls after its last stage."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from htvs.atomic import write_text_atomic
from htvs.errors import HTVSError
from htvs.report import figures
from htvs.report.candidates import candidate_rows, decomposition_text, finite, msd_curves, validation_flags
from htvs.report.cifs import write_candidate_cifs
from htvs.report.funnel import funnel_rows
from htvs.report.html import (
    candidate_table,
    dictionary_section,
    esc,
    figure,
    fmt,
    funnel_table,
    key_value_table,
    page,
    plain_table,
    sig,
)
from htvs.report.inputs import CampaignOutput, read_campaign_output

#: The report's file name inside the campaign output folder.
REPORT_FILE = "report.html"

log = logging.getLogger(__name__)


def _funnel_section(output: CampaignOutput) -> str:
    rows = funnel_rows(output.funnel, output.config)
    note = ("<p class=muted>Counts are formulas up to stage 3 and structures from stage 4 on (column 2). The paper's "
            "counts are those of its campaign on 16,205 MP prototypes; “—” where it reports none. Thresholds come "
            "from the campaign config recorded in run.json.</p>")
    counts = {k: v for k, v in output.funnel.items() if isinstance(v, int | float)}
    fig = figures.funnel_figure(counts) if counts else None
    return note + funnel_table(rows) + figure(fig, "funnel counts (log scale)")


def _histogram_panels(output: CampaignOutput) -> list[dict[str, Any]]:
    s = (output.config or {}).get("screening", {})

    def mark(key: str, text: str) -> list[tuple[float, str]]:
        value = finite(s.get(key))
        return [] if value is None else [(value, text.format(value))]

    panels = []
    screen = output.screen
    predictions = output.predictions if output.predictions is not None else screen
    if predictions is not None and "e_form_mean" in predictions:
        panels.append({"values": predictions["e_form_mean"], "label": "predicted E_f (eV/atom)",
                       "title": "E_f", "thresholds": mark("max_e_form_ev_per_atom", "E_f ≤ {:g} eV/atom")})
    if screen is not None:
        panels.append({"values": screen["e_above_hull"], "label": "predicted E_hull (eV/atom)",
                       "title": "E_hull",
                       "thresholds": mark("max_e_above_hull_ev_per_atom", "E_hull ≤ {:g} eV/atom")})
    if predictions is not None and "band_gap_mean" in predictions:
        panels.append({"values": predictions["band_gap_mean"], "label": "predicted band gap (eV)", "title": "band gap",
                       "thresholds": mark("min_band_gap_ev", "gap ≥ {:g} eV")})
    if screen is not None:
        panels.append({"values": screen["phi_ox"], "label": "oxidation limit φ_ox (V vs Li/Li+)",
                       "title": "φ_ox (past the first two filters)",
                       "thresholds": mark("min_phi_ox_v", "φ_ox ≥ {:g} V")})
    return panels


def _screen_section(output: CampaignOutput) -> str:
    panels = _histogram_panels(output)
    if not panels:
        return '<p class="muted">No predictions.parquet or screen.parquet in this folder.</p>'
    note = "" if output.config else "<p class=muted>Thresholds not drawn: no run.json with the campaign config.</p>"
    parts = [note, figure(figures.prediction_histograms(panels),
                          "histograms of the screened predictions; dashed lines: the thresholds")]
    if output.screen is not None and output.screen[["e_above_hull", "phi_ox"]].notna().all(axis=1).any():
        parts.append(figure(figures.screening_figure(output.screen), "E_hull against φ_ox; survivors in red"))
    return "".join(parts)


def _conductivity_section(output: CampaignOutput) -> str:
    if output.conductivity is None:
        return '<p class="muted">No conductivity.parquet in this folder (no stage 6 in this campaign).</p>'
    frame = output.conductivity
    if not (frame["log10_sigma_mean"].notna() & frame["p_superionic"].notna()).any():
        return '<p class="muted">conductivity.parquet holds no scored structure.</p>'
    cut = finite((output.config or {}).get("conductivity", {}).get("min_p_superionic"))
    validated = {str(d.get("id")) for d in output.documents if not d.get("error")}
    spread = ("error bars: ensemble spread 10^(mean ± std) of the best structures"
              if "log10_sigma_std" in frame else "no ensemble spread recorded")
    return figure(figures.conductivity_figure(frame, cut, validated),
                  f"predicted σ(300 K) in mS/cm (log scale) against P(σ ≥ 10⁻⁴ S/cm); {spread}; dashed: the "
                  "shortlist cut; dotted: 0.1 mS/cm")


def _candidates_section(output: CampaignOutput, window_products: bool) -> tuple[str, int]:
    rows = candidate_rows(output, window_products=window_products)
    links = write_candidate_cifs(output.folder, [
        {"id": r.id, "formula": r.formula, "origin": r.origin, "prototype_id": r.prototype_id, "cif": r.cif}
        for r in rows
    ])
    for row in rows:
        row.cif_link = links.get(row.id)
    if not rows:
        return '<p class="muted">No shortlisted structure (structure_candidates.csv is empty or absent).</p>', 0
    note = (f"<p class=muted>{len(rows):,} shortlisted structures, best first; click a header to sort. Hover a "
            "header for its meaning (see the data dictionary). Every header names its unit; (—) means "
            "dimensionless or text.</p>")
    return note + candidate_table(rows), len(rows)


def _validation_section(output: CampaignOutput) -> str:
    if not output.documents and output.validation is None:
        return '<p class="muted">No validation.json in this folder (stage 7 did not run).</p>'
    rows = {str(r["id"]): r for r in output.validation.to_dict("records")} if output.validation is not None else {}
    documents = output.documents or [{"id": i} for i in rows]
    parts = []
    for document in documents:
        row_id = str(document.get("id"))
        row = rows.get(row_id)
        formula = document.get("formula") or (row or {}).get("formula") or row_id
        parts.append(f"<h3>{esc(formula)} <span class=muted>({esc(row_id)})</span></h3>")
        error = document.get("error") or (row or {}).get("error")
        if isinstance(error, str) and error:
            parts.append(f'<p class="flag">validation failed: {esc(error)}</p>')
            continue
        sigma = document.get("sigma_300K_mS_cm") or {}
        flags = validation_flags(document, row)
        trusted = document.get("trusted", (row or {}).get("trusted"))
        ea, ea_std = finite(document.get("activation_energy_eV")), finite(document.get("activation_energy_std_eV"))
        pairs = [
            ("backend (—)", str(document.get("backend", "—"))),
            ("E_f relaxed (eV/atom)", fmt(finite(document.get("e_form")))),
            ("E_hull relaxed (eV/atom)", fmt(finite(document.get("e_above_hull")))),
            ("decomposition (atomic fractions)", decomposition_text(document) or "—"),
            ("window φ_red–φ_ox (V vs Li/Li+)",
             f"{fmt(finite(document.get('phi_red')), 2)}–{fmt(finite(document.get('phi_ox')), 2)}"),
            ("E_a (eV)", fmt(ea) + (f" ± {fmt(ea_std)}" if ea_std is not None else "")),
            ("σ(300 K) (mS/cm)", f"{sig(finite(sigma.get('mean')))} (windows: {sig(finite(sigma.get('low')))}–"
                                 f"{sig(finite(sigma.get('high')))})"),
            ("MD supercell (atoms)", str(document.get("supercell_atoms", "—"))),
            ("relaxation converged (—)", str(document.get("relax_converged", "—"))),
            ("trusted (—)", "not recorded" if trusted is None else str(bool(trusted))),
            ("flags (—)", "; ".join(flags) or "none"),
            ("notes (—)", "; ".join(str(n) for n in document.get("notes") or []) or "none"),
        ]
        parts.append(key_value_table(pairs))
        curves = msd_curves(document, row)
        msd = figure(figures.msd_figure(curves, f"{formula}: Li MSD"), f"{formula}: Li MSD against time per "
                     "temperature") if curves else '<p class="muted">MSD curves not recorded by this run.</p>'
        diffusivity = document.get("diffusivity") or {}
        arrhenius = figure(figures.arrhenius_figure(diffusivity, ea, f"{formula}: Arrhenius"),
                           f"{formula}: log10 D against 1000/T with the Arrhenius fit") if diffusivity else (
            '<p class="muted">No diffusivity recorded.</p>')
        parts.append(f'<div class="figs">{msd}{arrhenius}</div>')
    return "".join(parts)


def _metadata_section(output: CampaignOutput) -> str:
    run = output.run
    if run is None:
        return ('<p class="muted">No run.json in this folder: the config hash, models and stage timings were not '
                "recorded (a run of an older htvs, or a copied folder).</p>")
    pairs = [
        ("campaign (—)", str(run.get("campaign", "—"))),
        ("config hash (SHA-256)", str(run.get("config_hash", "—"))),
        ("htvs version (—)", str(run.get("htvs_version", "—"))),
        ("code version (—)", str(run.get("code_version", "—"))),
        ("run finished (UTC)", str(run.get("finished", "—"))),
    ]
    models = [[str(m.get("role", "—")), str(m.get("name", "—")), str(m.get("format") or "—"),
               str(m.get("target") or "—"), str(m.get("version", "—")), str(m.get("date") or "—"),
               str(m.get("members", "—"))] for m in run.get("models") or []]
    timings = []
    for name, stage in (run.get("stages") or {}).items():
        seconds = stage.get("timings_s") or {}
        total = seconds.get("total", max(seconds.values(), default=0.0))
        timings.append([name, f"{total:.1f}", ", ".join(f"{k} {v:.1f}" for k, v in seconds.items() if k != "total"),
                        str(stage.get("created", "—"))])
    return (key_value_table(pairs, "run-metadata")
            + "<h3>models</h3>" + plain_table(
                ["role (—)", "name (—)", "format (—)", "target (—)", "version (card SHA-256, 12 hex)", "date (—)",
                 "members (count)"], models, "models")
            + "<h3>stage timings</h3><p class=muted>from the stage manifests; a stage reused from the store shows "
              "the time of the run that computed it.</p>"
            + plain_table(["stage (—)", "total (s)", "parts (s)", "finished (UTC)"], timings, "timings"))


def build_report(folder: str | Path, window_products: bool = True) -> tuple[str, dict[str, int]]:
    """The report of ``folder`` as HTML text, and counts of what it holds (``candidates``).

    Writes the candidates' CIF files under ``folder/cifs`` (the report links to them).

    Raises:
        InvalidInput: ``folder`` is not a campaign output folder, or a file in it is unreadable
            (the message names the file).
    """
    output = read_campaign_output(folder)
    candidates, n_candidates = _candidates_section(output, window_products)
    sections = [
        ("funnel", "Funnel", _funnel_section(output)),
        ("screen", "Composition screen", _screen_section(output)),
        ("conductivity", "Conductivity (stage 6)", _conductivity_section(output)),
        ("candidates", "Candidates", candidates),
        ("validation", "Validation (stage 7)", _validation_section(output)),
        ("metadata", "Run metadata", _metadata_section(output)),
        ("dictionary", "Data dictionary", dictionary_section()),
    ]
    name = (output.run or {}).get("campaign") or Path(folder).resolve().name
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    subtitle = f"htvs campaign report of {Path(folder).resolve()}; written {made}"
    return page(f"Campaign {name}", sections, subtitle), {"candidates": n_candidates}


def write_campaign_report(folder: str | Path, window_products: bool = True) -> Path:
    """Write ``folder/report.html`` (atomically) and the candidates' CIFs; returns the report's path.

    Raises:
        InvalidInput: see :func:`build_report`.
    """
    text, _ = build_report(folder, window_products=window_products)
    path = Path(folder) / REPORT_FILE
    write_text_atomic(path, text)
    return path


def report_after_run(out_dir: str | Path, config, results: dict[str, Any]) -> Path | None:
    """The campaign runner's last step: record ``run.json``, then write the report.

    Never raises: a failure is logged with the reason and how to retry, the campaign's tables
    stay as written, and a report left from an earlier run is removed (it would describe other
    results). Returns the report's path, or None when it could not be written.
    """
    from htvs.report.metadata import record_run

    out_dir = Path(out_dir)
    try:
        record_run(out_dir, config, results)
        return write_campaign_report(out_dir)
    except (HTVSError, OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as exc:
        log.error("campaign report not written (%s: %s); the campaign's tables in %s are complete; "
                  "retry with `htvs campaign report %s`", type(exc).__name__, exc, out_dir, out_dir)
        stale = out_dir / REPORT_FILE
        if stale.is_file():
            stale.unlink()
        return None
