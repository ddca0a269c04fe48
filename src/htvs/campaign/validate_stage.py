"""Campaign stage 7: validate the best of the conductivity shortlist with physics.

Takes the ``validation.top_k`` shortlisted structures of stage 6 with the highest P(superionic)
and runs :func:`htvs.validation.validate_structure` on each (relaxation, E_f / E_hull / window,
MD at every temperature, D(T), Arrhenius, sigma(300 K)). A structure that cannot be validated
(refused input, failed relaxation) gets an error row; the others go on. A result with sanity
flags (:mod:`htvs.validation.flags`: unconverged relaxation, MD temperature off its set point,
collapsed or flying-apart atoms, Ea <= 0 or too few temperatures, unphysical sigma) is kept with
its flags but counted neither as ``validated`` nor as ``validated_stable``.

MD checkpoints live outside the store, in ``validation.workdir`` (default
``<system temp>/htvs-validation``), under a folder named after the stage's content-addressed
prefix, so a campaign killed during an MD run resumes it from its last checkpoint when run again
with the same configuration on the same machine.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from htvs.campaign.config import CampaignConfig, validation_config
from htvs.campaign.graph import output_key
from htvs.errors import HTVSError
from htvs.store import ArtifactStore, StageManifest, run_cached

#: Columns of ``validation.parquet`` (units: eV/atom, V vs Li/Li+, eV, mS/cm; ``origin``: the
#: structure's, ``substitution`` or ``generated``; ``clscore``: the composition's synthesizability
#: score, 0..1, above 0.5 likely synthesizable, null when the model cannot score the formula;
#: ``flags``: the reasons of :mod:`htvs.validation.flags` joined by "; " (empty: none);
#: ``trusted``: validated without a flag (False for an error row); ``msd_curves_json``: the
#: result's ``msd_curves`` as JSON text, temperature in K -> {"t_ps", "msd_li_A2",
#: "mean_temperature_K"}, "{}" for an error row).
VALIDATION_COLUMNS = (
    "id", "formula", "origin", "p_superionic", "e_form", "e_above_hull", "phi_red", "phi_ox", "activation_energy_eV",
    "sigma_300K_mS_cm", "sigma_300K_low_mS_cm", "sigma_300K_high_mS_cm", "stable", "clscore", "flags", "trusted",
    "msd_curves_json", "error",
)  # fmt: skip


def _clscore(formula: str) -> float | None:
    """The synthesizability score of ``formula`` (None when the model cannot score it)."""
    from htvs.synth import clscore_column

    return clscore_column([formula])[0]


def _row(candidate: pd.Series, result: dict | None, error: str | None, max_e_hull: float) -> dict:
    sigma = (result or {}).get("sigma_300K_mS_cm") or {}
    e_hull = (result or {}).get("e_above_hull")
    formula = (result or {}).get("formula") or candidate["formula"]
    return {
        "id": candidate["id"],
        "formula": formula,
        "origin": candidate.get("origin"),
        "p_superionic": float(candidate["p_superionic"]),
        "e_form": (result or {}).get("e_form"),
        "e_above_hull": e_hull,
        "phi_red": (result or {}).get("phi_red"),
        "phi_ox": (result or {}).get("phi_ox"),
        "activation_energy_eV": (result or {}).get("activation_energy_eV"),
        "sigma_300K_mS_cm": sigma.get("mean"),
        "sigma_300K_low_mS_cm": sigma.get("low"),
        "sigma_300K_high_mS_cm": sigma.get("high"),
        "stable": bool(e_hull is not None and e_hull <= max_e_hull),
        "clscore": _clscore(formula),
        "flags": "; ".join(f["reason"] for f in (result or {}).get("flags", [])),
        "trusted": bool(result is not None and result.get("trusted")),
        "msd_curves_json": json.dumps((result or {}).get("msd_curves") or {}, allow_nan=False),
        "error": error,
    }


#: Progress units per validated structure (its MD fraction, in thousandths).
_PER_STRUCTURE = 1000


def _md_relay(progress, index: int, count: int):
    """Validation reports -> ``progress("validate MD", thousandths done, count * 1000)``, so that
    hours of MD show a count and an ETA."""
    from htvs.validation.records import no_progress

    if progress is None:
        return no_progress
    total = count * _PER_STRUCTURE

    def relay(report) -> None:
        progress("validate MD", index * _PER_STRUCTURE + int(report.fraction * _PER_STRUCTURE), total)

    return relay


def run_validation(
    store: ArtifactStore,
    config: CampaignConfig,
    structures: StageManifest,
    conductivity: StageManifest,
    progress=None,
) -> StageManifest:
    """Stage 7 on the stage-6 shortlist; writes ``validation.parquet`` and ``validation.json``."""
    section = config.validation
    keys = [output_key(conductivity, "conductivity", "conductivity"), output_key(structures, "structures", "structures")]

    def step(store: ArtifactStore, prefix: str):
        from htvs.thermo import ReferenceHull
        from htvs.validation import load_backend, structure_from_cif_text, validate_structure

        start = time.perf_counter()
        scored = store.get_table(keys[0]).to_pandas()
        chosen = scored[scored["shortlisted"]].head(section.top_k)
        cifs = store.get_table(keys[1]).to_pandas().set_index("id")["cif"]
        rows, documents = [], []
        if len(chosen):
            settings = validation_config(config)
            backend = load_backend(section.backend, threads=section.threads)
            hull = ReferenceHull.bundled()
            root = Path(section.workdir) if section.workdir else Path(tempfile.gettempdir()) / "htvs-validation"
        for i, (_, candidate) in enumerate(chosen.iterrows()):
            if progress is not None:
                progress("validate", i, len(chosen))
            try:
                structure = structure_from_cif_text(cifs[candidate["id"]], candidate["id"])
                result = validate_structure(
                    structure, settings, backend, hull, structure_id=candidate["id"],
                    workdir=root / prefix.replace("/", "_") / candidate["id"],
                    progress=_md_relay(progress, i, len(chosen)),
                ).to_dict()
                rows.append(_row(candidate, result, None, section.max_e_above_hull_ev_per_atom))
                documents.append(result)
            except HTVSError as exc:  # a refused or failed candidate; the others go on
                rows.append(_row(candidate, None, str(exc), section.max_e_above_hull_ev_per_atom))
                documents.append({"id": candidate["id"], "error": str(exc)})
        frame = pd.DataFrame(rows, columns=list(VALIDATION_COLUMNS))
        table_key, json_key = f"{prefix}/validation.parquet", f"{prefix}/validation.json"
        store.put_table(table_key, pa.Table.from_pandas(frame, preserve_index=False))
        store.put_bytes(json_key, (json.dumps(documents, indent=1) + "\n").encode())
        ok = frame["error"].isna()
        trusted = ok & frame["trusted"].astype(bool)
        # a flagged result is reported with its flags but not counted as validated
        counts = {"validated": int(trusted.sum()), "validated_stable": int((trusted & frame["stable"]).sum()),
                  "flagged": int((ok & ~trusted).sum()), "errors": int((~ok).sum())}
        return [table_key, json_key], counts, {"validate": time.perf_counter() - start}

    return run_cached(store, "validate", section, keys, step)
