"""The data dictionary: every column a person reads in a campaign's output, with its unit.

One definition for the tables written to a campaign's ``--out`` folder that people open
(``candidates.csv``, ``structure_candidates.csv``, ``validation.parquet`` / ``validation.json``)
and for the candidate table of ``report.html``. The report renders it as HTML;
:func:`markdown_dictionary` renders it as Markdown (for the README). Columns a table holds only
in some runs (the probabilistic screen's probabilities, ``charge_balanced``, the MD curves) are
listed with the condition in their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A dimensionless quantity.
NO_UNIT = "—"


@dataclass(frozen=True)
class Column:
    """One column: its name in the file, its unit (:data:`NO_UNIT` when dimensionless or text)
    and what it means."""

    name: str
    unit: str
    meaning: str


#: The screen's per-formula columns, shared by both candidate tables.
_FORMULA_COLUMNS = (
    Column("formula", NO_UNIT, "reduced formula (pymatgen) of the substituted composition"),
    Column("e_form_mean", "eV/atom", "predicted formation energy E_f: mean of the Roost ensemble"),
    Column("e_form_std", "eV/atom", "spread of E_f over the ensemble members (calibrated population std)"),
    Column("band_gap_mean", "eV", "predicted band gap: mean of the Roost ensemble"),
    Column("band_gap_std", "eV", "spread of the band gap over the ensemble members"),
    Column("e_above_hull", "eV/atom", "predicted E_hull: E_f against the bundled Materials Project hull "
           "(negative: below the hull)"),
    Column("phi_red", "V vs Li/Li+", "reduction limit of the electrochemical window (predicted E_f)"),
    Column("phi_ox", "V vs Li/Li+", "oxidation limit φ_ox of the electrochemical window (predicted E_f)"),
    Column("p_e_form", NO_UNIT, "probabilistic rule only: P(E_f ≤ threshold), 0..1"),
    Column("p_e_hull", NO_UNIT, "probabilistic rule only: P(E_hull ≤ threshold), 0..1"),
    Column("p_band_gap", NO_UNIT, "probabilistic rule only: P(band gap ≥ threshold), 0..1"),
    Column("p_phi_ox", NO_UNIT, "probabilistic rule only: P(φ_ox ≥ threshold), 0..1"),
    Column("p_joint", NO_UNIT, "probabilistic rule only: P(all composition filters hold), 0..1"),
    Column("charge_balanced", NO_UNIT, "when recorded: whether the formula admits a charge-balanced "
           "assignment of common oxidation states (true/false)"),
    Column("clscore", NO_UNIT, "synthesizability score of the composition (CLscore-like), 0..1; above 0.5 "
           "likely synthesizable; empty where the model cannot score it"),
)

#: ``candidates.csv``: the formulas that passed the composition screen, best first.
CANDIDATES = _FORMULA_COLUMNS

#: ``structure_candidates.csv``: the conductivity shortlist (structures), with their formula's
#: screen values.
STRUCTURE_CANDIDATES = (
    Column("id", NO_UNIT, "structure id: prototype id | species map (substitution) or the generated "
           "sample's id"),
    Column("formula", NO_UNIT, "reduced formula of the structure"),
    Column("prototype_id", NO_UNIT, "Materials Project (or source) id of the prototype; empty for a "
           "generated structure"),
    Column("origin", NO_UNIT, "substitution (stage 1 on a prototype) or generated (stage 5)"),
    Column("log10_sigma_mean", "log10(S/cm)", "predicted log10 σ(300 K): median of the conductivity "
           "ensemble"),
    Column("log10_sigma_std", "log10(S/cm)", "spread of the predicted log10 σ(300 K) over the ensemble"),
    Column("p_superionic", NO_UNIT, "P(σ(300 K) ≥ 10⁻⁴ S/cm) from the ensemble, 0..1, calibrated in "
           "grouped CV (see the model card); the shortlist cut applies to it"),
    *(c for c in _FORMULA_COLUMNS if c.name != "formula"),
)

#: ``validation.parquet`` (and the same keys in ``validation.json``): stage 7 per structure.
VALIDATION = (
    Column("id", NO_UNIT, "structure id (as in structure_candidates.csv)"),
    Column("formula", NO_UNIT, "reduced formula of the relaxed structure"),
    Column("origin", NO_UNIT, "substitution or generated"),
    Column("p_superionic", NO_UNIT, "P(σ(300 K) ≥ 10⁻⁴ S/cm) of the conductivity model, 0..1"),
    Column("e_form", "eV/atom", "formation energy of the relaxed structure (CHGNet or VASP)"),
    Column("e_above_hull", "eV/atom", "E_hull of the relaxed structure against the reference hull"),
    Column("phi_red", "V vs Li/Li+", "reduction limit of the relaxed compound's window"),
    Column("phi_ox", "V vs Li/Li+", "oxidation limit of the relaxed compound's window"),
    Column("activation_energy_eV", "eV", "Arrhenius activation energy E_a of Li diffusion from MD"),
    Column("sigma_300K_mS_cm", "mS/cm", "σ(300 K) extrapolated from the Arrhenius fit (Nernst–Einstein)"),
    Column("sigma_300K_low_mS_cm", "mS/cm", "lowest σ(300 K) over the production windows"),
    Column("sigma_300K_high_mS_cm", "mS/cm", "highest σ(300 K) over the production windows"),
    Column("stable", NO_UNIT, "E_hull of the relaxed structure ≤ validation.max_e_above_hull_ev_per_atom"),
    Column("clscore", NO_UNIT, "synthesizability score of the composition, 0..1"),
    Column("error", NO_UNIT, "why the structure could not be validated; empty when it was"),
    Column("diffusivity", "cm²/s", "validation.json only: Li diffusivity D per temperature (K): mean and std"),
    Column("decomposition", NO_UNIT, "validation.json only: hull phases and atomic fractions the relaxed "
           "compound decomposes into"),
    Column("msd_curves_json", "ps, Å², K", "when recorded: Li MSD per temperature as JSON "
           "{T: {t_ps, msd_li_A2, mean_temperature_K}} (validation.json: msd_curves)"),
    Column("flags", NO_UNIT, "when recorded: reasons to distrust the result, joined by '; ' "
           "(validation.json: a list of {code, reason})"),
    Column("trusted", NO_UNIT, "when recorded: true when the result carries no flag"),
)

#: The candidate table of ``report.html`` (one row per shortlisted structure).
REPORT_CANDIDATES = (
    Column("rank", NO_UNIT, "order of the conductivity shortlist (highest P(superionic) first)"),
    Column("formula", NO_UNIT, "reduced formula; the formula as written below it when the run recorded one"),
    Column("prototype", NO_UNIT, "prototype id and the space group (symbol, number) of this structure "
           "(spglib, symprec 0.1 Å)"),
    Column("origin", NO_UNIT, "substitution or generated"),
    Column("window", "V vs Li/Li+", "electrochemical window φ_red–φ_ox from the predicted E_f; the relaxed "
           "one when validated"),
    Column("decomposition products", NO_UNIT, "phases formed at φ_red (reduction) and φ_ox (oxidation) of the "
           "predicted window; for a validated structure instead the hull phases (atomic fractions) its relaxed "
           "energy decomposes into"),
    Column("E_hull predicted", "eV/atom", "E_hull from the composition model's E_f"),
    Column("E_hull relaxed", "eV/atom", "E_hull after relaxation: stage 7 when validated, else the relax "
           "step (CHGNet hull); empty when not relaxed"),
    Column("band gap", "eV", "predicted band gap (ensemble mean ± std)"),
    Column("σ(300 K)", "mS/cm", "predicted range 10^(mean ± std) of the conductivity model; the MD range "
           "(low–high over the production windows) when validated"),
    Column("clscore", NO_UNIT, "synthesizability score, 0..1"),
    Column("charge balanced", NO_UNIT, "when recorded: charge-balanced composition (yes/no)"),
    Column("flags", NO_UNIT, "validation flags (reasons to distrust the result); 'not validated' when stage 7 "
           "did not run on it"),
    Column("CIF", NO_UNIT, "link to the structure's CIF file under cifs/ (as materialized, before relaxation)"),
)

#: Table name (as a reader sees it) -> its columns.
DATA_DICTIONARY: dict[str, tuple[Column, ...]] = {
    "candidates.csv": CANDIDATES,
    "structure_candidates.csv": STRUCTURE_CANDIDATES,
    "validation.parquet / validation.json": VALIDATION,
    "report.html candidate table": REPORT_CANDIDATES,
}


def unit_of(table: str, column: str) -> str:
    """The unit of ``column`` in ``table`` (a key of :data:`DATA_DICTIONARY`).

    Raises:
        KeyError: unknown table or column (the message names both).
    """
    for entry in DATA_DICTIONARY[table]:
        if entry.name == column:
            return entry.unit
    raise KeyError(f"{table} has no column {column!r} in the data dictionary")


def header(column: Column) -> str:
    """The column's header with its unit, e.g. ``E_hull predicted (eV/atom)``; ``(—)`` when
    dimensionless, so every header states its unit."""
    return f"{column.name} ({column.unit})"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_dictionary(tables: dict[str, tuple[Column, ...]] | None = None) -> str:
    """The data dictionary as Markdown: one ``### table`` heading and one
    ``| column | unit | meaning |`` table per table."""
    parts = []
    for name, columns in (tables or DATA_DICTIONARY).items():
        rows = [f"### {name}", "", "| column | unit | meaning |", "|---|---|---|"]
        rows += [f"| `{_markdown_cell(c.name)}` | {_markdown_cell(c.unit)} | {_markdown_cell(c.meaning)} |"
                 for c in columns]
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"
