"""Run metadata recorded beside a campaign's tables (``run.json``) and read by the report.

``run.json`` holds the campaign config (as validated, paths resolved), its hash, the htvs
version, when the run finished, each stage's timings (seconds) and model versions from its
manifest, and the models the config names (folder, card format and target, card sha256, date).
"""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from htvs.atomic import write_json_atomic
from htvs.report.inputs import RUN_FILE


def shipped_model_folder(name: str) -> Path:
    """``htvs/models/<name>`` inside the installed package."""
    return Path(str(resources.files("htvs") / "models" / name))


def model_summary(role: str, folder: str | Path) -> dict[str, Any]:
    """Name, kind and version of the model in ``folder`` from its ``model_card.json``: the card's
    ``format``/``target``, the first 12 hex of the card's sha256 (the model version used in cache
    keys) and the card's export or training date; ``version`` "missing" without a card."""
    import json

    from htvs.model_cards import CARD_NAME, card_sha256

    folder = Path(folder)
    summary: dict[str, Any] = {"role": role, "name": folder.name, "folder": str(folder)}
    digest = card_sha256(folder)
    summary["version"] = digest[:12]
    path = folder / CARD_NAME
    if path.is_file():
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            card = {}
        if isinstance(card, dict):
            summary["format"] = next((card[k] for k in ("format", "model", "name") if isinstance(card.get(k), str)),
                                     None)
            summary["target"] = card.get("target")
            summary["date"] = card.get("exported") or card.get("trained")
            members = card.get("models") or card.get("members")
            if isinstance(members, list):
                summary["members"] = len(members)
    return summary


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def campaign_models(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The models a campaign config (as a plain dict) uses, summarized by :func:`model_summary`;
    CHGNet by its package version when the relax or validation step runs."""
    composition = config.get("composition", {})
    models = [
        model_summary("stage 2: formation energy", composition.get("e_form_models") or shipped_model_folder("e_form")),
        model_summary("stage 2: band gap", composition.get("band_gap_models") or shipped_model_folder("band_gap")),
    ]
    if config.get("generation", {}).get("enabled"):
        models.append(model_summary("stage 5: generator",
                                    config["generation"].get("models") or shipped_model_folder("generator")))
    models.append(model_summary("stage 6: conductivity",
                                config.get("conductivity", {}).get("models") or shipped_model_folder("conductivity")))
    models.append(model_summary("synthesizability (clscore)", shipped_model_folder("synthesizability")))
    if config.get("relax", {}).get("enabled") or config.get("validation", {}).get("top_k"):
        models.append({"role": "relax / stage 7: interatomic potential", "name": "CHGNet",
                       "version": _package_version("chgnet"), "format": "chgnet package weights"})
    return models


def _stage_records(results: dict[str, Any]) -> dict[str, Any]:
    """Per stage: its manifests' timings (seconds, summed over shards), model versions and date."""
    records: dict[str, Any] = {}
    for name, result in results.items():
        manifests = result if isinstance(result, tuple) else (result,)
        manifests = [m for m in manifests if hasattr(m, "timings_s")]
        if not manifests:
            continue
        timings: dict[str, float] = {}
        for manifest in manifests:
            for key, seconds in manifest.timings_s.items():
                timings[key] = timings.get(key, 0.0) + float(seconds)
        records[name] = {
            "timings_s": timings,
            "model_versions": dict(manifests[0].model_versions),
            "created": max(m.created for m in manifests),
            "code_version": manifests[0].code_version,
            "shards": len(manifests) if isinstance(result, tuple) else None,
        }
    return records


def run_record(config, results: dict[str, Any]) -> dict[str, Any]:
    """The content of ``run.json`` for a finished run of ``config`` (a CampaignConfig) with the
    stage manifests ``results`` (step name -> manifest or tuple of manifests)."""
    import htvs
    from htvs.store import code_version, config_hash

    plain = config.model_dump(mode="json")
    return {
        "campaign": config.name,
        "config": plain,
        "config_hash": config_hash(config),
        "htvs_version": htvs.__version__,
        "code_version": code_version(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stages": _stage_records(results),
        "models": campaign_models(plain),
    }


def record_run(out_dir: str | Path, config, results: dict[str, Any]) -> Path:
    """Write ``run.json`` (:func:`run_record`) into ``out_dir`` atomically; returns its path."""
    path = Path(out_dir) / RUN_FILE
    write_json_atomic(run_record(config, results), path)
    return path
