"""The funnel table of the report: each step's count, what it counts, the threshold that made it
(with its value and unit, from the recorded campaign config) and the seed paper's count.

The paper's counts are those of its campaign on 16,205 Materials Project prototypes, as recorded
in BENCHMARKS.md ("The paper's campaign on the 4,320 MP prototypes"); a step the paper does not
report a number for shows "—".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The seed paper's funnel counts by funnel key (BENCHMARKS.md); other steps: not reported.
PAPER_FUNNEL: dict[str, int] = {
    "prototypes": 16_205,
    "substitutions": 26_549_208,
    "unique_formulas": 1_379_333,
    "e_form_and_hull": 954_301,
    "band_gap": 797_557,
    "oxidation_window": 2_138,
    "structures": 57_641,
    "unique_structures": 14_535,
    "scored_structures": 14_535,
    "superionic_shortlist": 714,
}

#: What each funnel key counts.
COUNTED: dict[str, str] = {
    "prototypes": "prototype structures",
    "substitutions": "substitutions",
    "unique_formulas": "formulas",
    "predicted": "formulas",
    "charge_balanced": "formulas",
    "e_form_and_hull": "formulas",
    "band_gap": "formulas",
    "oxidation_window": "formulas",
    "generated_formulas": "formulas",
    "generated_samples": "structures",
    "generated_accepted": "structures",
    "structures": "structures",
    "unique_structures": "structures",
    "relaxed": "structures",
    "relaxed_stable": "structures",
    "scored_structures": "structures",
    "superionic_shortlist": "structures",
    "validated": "structures",
    "validated_stable": "structures",
}

#: A short label of each funnel key.
LABELS: dict[str, str] = {
    "prototypes": "prototypes loaded",
    "substitutions": "stage 1: substitutions",
    "unique_formulas": "stage 1: unique formulas",
    "predicted": "stage 2: predicted by the composition models",
    "charge_balanced": "stage 3: charge-balance filter",
    "e_form_and_hull": "stage 3: E_f and E_hull filter",
    "band_gap": "stage 3: band-gap filter",
    "oxidation_window": "stage 3: oxidation-limit filter",
    "generated_formulas": "stage 5: formulas given to the generator",
    "generated_samples": "stage 5: samples drawn",
    "generated_accepted": "stage 5: samples passing the sanity filter",
    "structures": "stage 4: structures materialized (+ generated)",
    "unique_structures": "stage 4: after deduplication",
    "relaxed": "relax: relaxed with CHGNet",
    "relaxed_stable": "relax: stable after relaxation",
    "scored_structures": "stage 6: scored by the conductivity model",
    "superionic_shortlist": "stage 6: conductivity shortlist",
    "validated": "stage 7: validated (relaxation + MD)",
    "validated_stable": "stage 7: stable after relaxation",
}


@dataclass(frozen=True)
class FunnelRow:
    """One row of the report's funnel table."""

    key: str
    label: str
    counted: str
    count: int | float | None
    threshold: str
    paper: int | None


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def threshold_text(key: str, config: dict[str, Any] | None) -> str:
    """The threshold (name = value unit) or setting behind funnel step ``key``, from the campaign
    config recorded with the run (``run.json``); a fixed phrase when the config is not recorded."""
    if config is None:
        return "config not recorded (no run.json)"
    s = config.get("screening", {})
    sub = config.get("substitution", {})
    gen = config.get("generation", {})
    st = config.get("structures", {})
    rel = config.get("relax", {})
    con = config.get("conductivity", {})
    val = config.get("validation", {})
    proto = config.get("prototypes", {})
    rule = s.get("rule", "deterministic")
    prob = (f"; rule probabilistic, P ≥ {_number(s.get('min_probability'))}" if rule == "probabilistic"
            else "; rule deterministic (ensemble mean)")
    pool = sub.get("element_pool")
    temps = ", ".join(_number(t) for t in val.get("temperatures_k", ()))
    texts = {
        "prototypes": f"source = {proto.get('source')}; n_elements = {proto.get('n_elements')}; "
                      f"max_atoms = {_number(proto.get('max_atoms'))} sites",
        "substitutions": f"kept element = {sub.get('kept_element')}; required element = "
                         f"{sub.get('required_element')}; rule = {sub.get('rule')}; element pool = "
                         + ("the paper's 28 elements" if pool is None else f"{len(pool)} elements"),
        "unique_formulas": "distinct reduced formulas",
        "predicted": "E_f and band-gap ensembles give a finite prediction",
        "charge_balanced": ("known oxidation states summing to zero (screening.charge_balance on)"
                            if s.get("charge_balance") else "off (screening.charge_balance false): all pass"),
        "e_form_and_hull": f"max_e_form = {_number(s.get('max_e_form_ev_per_atom'))} eV/atom and "
                           f"max_e_above_hull = {_number(s.get('max_e_above_hull_ev_per_atom'))} eV/atom" + prob,
        "band_gap": f"min_band_gap = {_number(s.get('min_band_gap_ev'))} eV" + prob,
        "oxidation_window": f"min_phi_ox = {_number(s.get('min_phi_ox_v'))} V vs Li/Li+" + prob,
        "generated_formulas": f"max_formulas = {_number(gen.get('max_formulas'))} best screened formulas; "
                              f"max_atoms = {_number(gen.get('max_atoms'))} sites",
        "generated_samples": f"n_samples = {_number(gen.get('n_samples'))} per formula; seed = {gen.get('seed')}",
        "generated_accepted": f"min distance = max({_number(gen.get('min_distance_fraction'))} × bond-radius sum, "
                              f"{_number(gen.get('min_distance_angstrom'))} Å); volume "
                              f"{_number(gen.get('min_volume_per_atom_a3'))}–"
                              f"{_number(gen.get('max_volume_per_atom_a3'))} Å³/atom",
        "structures": f"every substitution of a surviving formula; rescale_volume = {st.get('rescale_volume')}",
        "unique_structures": f"StructureMatcher ltol = {_number(st.get('ltol'))}, stol = {_number(st.get('stol'))}, "
                             f"angle_tol = {_number(st.get('angle_tol'))}°",
        "relaxed": f"fmax = {_number(rel.get('fmax_ev_per_angstrom'))} eV/Å; max_steps = "
                   f"{_number(rel.get('max_steps'))}; max_structures = {_number(rel.get('max_structures'))}",
        "relaxed_stable": f"max_e_above_hull = {_number(rel.get('max_e_above_hull_ev_per_atom'))} eV/atom "
                          "(CHGNet hull)",
        "scored_structures": "the conductivity ensemble scores every unique structure",
        "superionic_shortlist": f"min_p_superionic = {_number(con.get('min_p_superionic'))} "
                                "(P(σ(300 K) ≥ 10⁻⁴ S/cm))",
        "validated": f"top_k = {_number(val.get('top_k'))} structures; backend = {val.get('backend')}; "
                     f"T = {temps} K; production = {_number(val.get('production_ps'))} ps",
        "validated_stable": f"max_e_above_hull = {_number(val.get('max_e_above_hull_ev_per_atom'))} eV/atom "
                            "(relaxed)",
    }
    return texts.get(key, "—")


def funnel_rows(funnel: dict[str, Any], config: dict[str, Any] | None) -> list[FunnelRow]:
    """The report's funnel rows, in ``funnel``'s order."""
    return [
        FunnelRow(key, LABELS.get(key, key.replace("_", " ")), COUNTED.get(key, "—"), count,
                  threshold_text(key, config), PAPER_FUNNEL.get(key))
        for key, count in funnel.items()
    ]
