"""The positive and unlabeled compositions of the synthesizability model.

Positives: experimentally reported compounds, the OBELiX compositions (``Reduced Composition``)
and the compositions of the experimental band-gap set (``expt_gap``, metals included).
Unlabeled: the compositions of the 36,737 structures of the 2018 MP snapshot, minus the
positives. Both are deduplicated by atomic fractions (:func:`htvs.synth.features.fraction_key`,
the same as deduplicating by reduced formula for integer formulas), because the features see
only the fractions; an MP composition keeps the count of its structures (polymorphs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from htvs.synth.features import fraction_key


@dataclass(frozen=True)
class Composition:
    """One deduplicated composition: a formula as first seen, its element amounts and its sources."""

    formula: str
    amounts: Mapping[str, float]
    sources: tuple[str, ...]
    structures: int = 0
    li: bool = field(default=False)


@dataclass(frozen=True)
class PUData:
    """Positive and unlabeled compositions, and what was skipped (formula, reason)."""

    positives: tuple[Composition, ...]
    unlabeled: tuple[Composition, ...]
    skipped: tuple[tuple[str, str], ...]
    counts: dict


def _amounts(formula: str) -> dict[str, float]:
    from htvs.formula import parse_composition

    comp = parse_composition(formula)
    return {el.symbol: float(amount) for el, amount in comp.items()}


def load_pu_data(rows: Mapping[str, int], data_dir=None) -> PUData:
    """Positives (OBELiX + expt_gap) and unlabeled (MP 2018 snapshot minus positives).

    Args:
        rows: the embedding's element -> row; a composition with an element outside it is skipped
            (and listed in ``skipped`` with the element).
        data_dir: where the full MP snapshot is (:func:`htvs.datasets.mp_structures_path`).
    """
    from htvs.datasets import load_formula_table, load_mp_structures, load_obelix
    from htvs.errors import InvalidInput

    skipped: list[tuple[str, str]] = []
    positives: dict[str, dict] = {}
    raw = {"obelix": 0, "expt_gap": 0, "mp_structures": 0}
    sources = [("obelix", load_obelix("all")["Reduced Composition"].astype(str).tolist()),
               ("expt_gap", load_formula_table("expt_gap")["formula"].astype(str).tolist())]
    for source, formulas in sources:
        for formula in formulas:
            raw[source] += 1
            try:
                amounts = _amounts(formula)
            except InvalidInput as exc:
                skipped.append((formula, str(exc)))
                continue
            missing = sorted(el for el in amounts if el not in rows)
            if missing:
                skipped.append((formula, f"no embedding for {', '.join(missing)}"))
                continue
            key = fraction_key(amounts)
            entry = positives.setdefault(key, {"formula": formula, "amounts": amounts, "sources": []})
            if source not in entry["sources"]:
                entry["sources"].append(source)
    unlabeled: dict[str, dict] = {}
    mp_in_positives = 0
    for record in load_mp_structures(data_dir):
        raw["mp_structures"] += 1
        amounts = {el: float(n) for el, n in record.element_counts().items()}
        missing = sorted(el for el in amounts if el not in rows)
        if missing:
            skipped.append((record.material_id, f"no embedding for {', '.join(missing)}"))
            continue
        key = fraction_key(amounts)
        if key in positives:
            mp_in_positives += 1
            positives[key].setdefault("structures", 0)
            positives[key]["structures"] += 1
            continue
        entry = unlabeled.setdefault(key, {"formula": _reduced(amounts), "amounts": amounts, "structures": 0})
        entry["structures"] += 1

    def build(entries: dict, default_sources: tuple[str, ...]) -> tuple[Composition, ...]:
        return tuple(
            Composition(formula=e["formula"], amounts=e["amounts"], sources=tuple(e.get("sources", default_sources)),
                        structures=int(e.get("structures", 0)), li="Li" in e["amounts"])
            for _, e in sorted(entries.items())
        )

    pos, unl = build(positives, ()), build(unlabeled, ("mp_2018",))
    counts = {
        "raw_rows": raw,
        "positives": len(pos),
        "positives_obelix": sum("obelix" in c.sources for c in pos),
        "positives_expt_gap": sum("expt_gap" in c.sources for c in pos),
        "positives_in_both": sum(len(c.sources) == 2 for c in pos),
        "positives_li": sum(c.li for c in pos),
        "positives_also_in_mp": sum(c.structures > 0 for c in pos),
        "mp_structures_of_positive_compositions": mp_in_positives,
        "unlabeled": len(unl),
        "unlabeled_li": sum(c.li for c in unl),
        "unlabeled_structures": sum(c.structures for c in unl),
        "unlabeled_li_structures": sum(c.structures for c in unl if c.li),
        "skipped": len(skipped),
    }
    return PUData(pos, unl, tuple(skipped), counts)


def _reduced(amounts: Mapping[str, float]) -> str:
    from pymatgen.core import Composition as PMGComposition

    return PMGComposition(dict(amounts)).reduced_formula
