"""The campaign's stages as store-to-store steps, each cached by its manifest.

Every step reads its inputs from the store by key and writes its outputs under its own
content-addressed prefix (``stages/<stage>/<hash>``) through :func:`htvs.store.run_cached`, so a
step whose manifest exists is skipped and a killed campaign resumes where it stopped. The same
steps back the embedded runner (one process), the Argo steps (one pod each) and, through
:class:`StageBackend`, the gRPC services.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from htvs.campaign.config import CampaignConfig, substitution_config
from htvs.campaign.graph import output_key
from htvs.errors import InvalidInput, StageFailed
from htvs.store import ArtifactStore, StageManifest, run_cached

PROTOTYPES_FILE = "prototypes.jsonl.gz"


class StageBackend(Protocol):
    """What executes the science of a step: in process (default) or a gRPC service."""

    def substitute(self, patterns: list, config) -> object: ...

    def predict(self, formulas: list[str], config: CampaignConfig) -> pd.DataFrame: ...

    def screen(self, predictions: pd.DataFrame, config: CampaignConfig, progress=None): ...

    def conductivity(self, items: list[tuple[str, object]], config: CampaignConfig) -> list: ...

    def generate(self, formulas: list[str], config: CampaignConfig, seed: int) -> list: ...


@dataclass
class InProcessBackend:
    """Calls the stage functions directly; heavy resources are loaded once and kept."""

    _models: tuple | None = None
    _hull: object | None = None
    _conductivity: object | None = None
    _generator: object | None = None

    def substitute(self, patterns, config):
        from htvs.substitution import enumerate_substitutions

        return enumerate_substitutions(patterns, config)

    def predict(self, formulas: list[str], config: CampaignConfig) -> pd.DataFrame:
        from htvs.composition import predict_compositions

        ef, gap = self.models(config)
        return predict_compositions(formulas, ef, gap, batch_size=config.composition.batch_size)

    def screen(self, predictions: pd.DataFrame, config: CampaignConfig, progress=None):
        from htvs.screening import CompositionScreenConfig, screen_compositions
        from htvs.thermo import ReferenceHull

        if self._hull is None:
            self._hull = ReferenceHull.bundled()
        return screen_compositions(
            predictions, self._hull, CompositionScreenConfig(**config.screening.model_dump()), progress
        )

    def conductivity(self, items: list[tuple[str, object]], config: CampaignConfig) -> list:
        """Stage 6 on ``(id, Structure or CIF text)`` items: ConductivityPrediction or
        htvs.errors.RowError each."""
        from htvs.conductivity.predict import ConductivityConfig, load_ensemble, predict_conductivity

        if self._conductivity is None:
            # every core for onnxruntime: the embedded runner is the only job
            self._conductivity = load_ensemble(config.conductivity.models, threads=None)
        section = config.conductivity
        return predict_conductivity(items, self._conductivity,
                                    ConductivityConfig(max_atoms=section.max_atoms, batch_size=section.batch_size))

    def generate(self, formulas: list[str], config: CampaignConfig, seed: int) -> list:
        """Stage 5 on ``formulas``: ``generation.n_samples`` samples each, in one denoising loop
        seeded with ``seed``; GeneratedStructure or htvs.errors.RowError rows (formula, sample
        order; see :func:`htvs.generation.stage.generate_structures`). torch's thread count is
        restored afterwards."""
        import torch

        from htvs.generation.stage import GenerationConfig, generate_structures, load_generator

        section = config.generation
        if self._generator is None:
            self._generator = load_generator(section.models)
        settings = GenerationConfig(n_samples=section.n_samples, max_atoms=section.max_atoms, seed=seed,
                                    step_lr=section.step_lr, threads=section.threads)
        threads = torch.get_num_threads()
        try:
            return generate_structures(formulas, self._generator, settings)
        finally:
            torch.set_num_threads(threads)

    def models(self, config: CampaignConfig):
        from htvs.composition.ship import load_ensemble

        if self._models is None:
            self._models = (
                load_ensemble("e_form", config.composition.e_form_models),
                load_ensemble("band_gap", config.composition.band_gap_models),
            )
        return self._models


def model_versions(config: CampaignConfig) -> dict[str, str]:
    """sha256 of each composition model card: part of the predict step's cache key."""
    from htvs.composition.ship import shipped_model_dir
    from htvs.model_cards import card_sha256

    return {
        target: card_sha256(folder or shipped_model_dir(target))
        for target, folder in (("e_form", config.composition.e_form_models),
                               ("band_gap", config.composition.band_gap_models))
    }


def conductivity_model_version(config: CampaignConfig) -> dict[str, str]:
    """sha256 of the conductivity model card: part of stage 6's cache key."""
    from htvs.conductivity.predict import default_model_dir
    from htvs.model_cards import card_sha256

    return {"conductivity": card_sha256(config.conductivity.models or default_model_dir())}


def generator_model_version(config: CampaignConfig) -> dict[str, str]:
    """sha256 of the generator's model card: part of stage 5's cache key (none when disabled)."""
    if not config.generation.enabled:
        return {}
    from htvs.generation.stage import default_model_dir
    from htvs.model_cards import card_sha256

    return {"generator": card_sha256(config.generation.models or default_model_dir())}


def run_prototypes(store: ArtifactStore, config: CampaignConfig, progress=None) -> StageManifest:
    """Load prototypes; store them as gzipped JSON lines (id, source, species, structure).

    ``progress(step, done, total)`` sees ``prototypes`` in records parsed (the MP snapshot)."""
    from htvs.prototypes import MPSnapshotSource, PrototypeFilter, source_from_spec

    section = config.prototypes

    def step(store: ArtifactStore, prefix: str):
        start = time.perf_counter()
        source = source_from_spec(
            section.source,
            PrototypeFilter(max_atoms=section.max_atoms, allowed_n_elements=tuple(section.n_elements)),
            ids=section.ids,
        )
        if isinstance(source, MPSnapshotSource) and progress is not None:
            loaded = source.load(lambda done, total: progress("prototypes", done, total))
        else:
            loaded = source.load()
        lines = [
            json.dumps(
                {"id": p.id, "source": p.source, "species_amounts": p.species_amounts,
                 "provenance": dict(p.provenance), "structure": p.structure.as_dict()}
            )
            for p in loaded.prototypes
        ]
        key = f"{prefix}/{PROTOTYPES_FILE}"
        store.put_bytes(key, gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
        skipped_key = f"{prefix}/skipped.json"
        store.put_json(skipped_key, [{"name": s.name, "reason": s.reason} for s in loaded.skipped])
        return [key, skipped_key], {"prototypes": len(lines), "skipped": len(loaded.skipped)}, {
            "load": time.perf_counter() - start
        }

    return run_cached(store, "prototypes", section, [], step)


def read_patterns(store: ArtifactStore, key: str) -> list:
    from htvs.substitution import SitePattern

    text = gzip.decompress(store.get_bytes(key)).decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [SitePattern(r["id"], {k: int(v) for k, v in r["species_amounts"].items()}) for r in rows]


def run_substitute(
    store: ArtifactStore, config: CampaignConfig, prototypes: StageManifest, backend: StageBackend
) -> StageManifest:
    """Stage 1 on the stored prototypes: the three Parquet tables."""
    from htvs.substitution.tables import formula_table, prototype_table, substitution_table

    proto_key = output_key(prototypes, "prototypes", "prototypes")
    sub_config = substitution_config(config)

    def step(store: ArtifactStore, prefix: str):
        start = time.perf_counter()
        result = backend.substitute(read_patterns(store, proto_key), sub_config)
        keys = []
        for name, table in (
            ("substitutions", substitution_table(result)),
            ("formulas", formula_table(result)),
            ("prototypes", prototype_table(result)),
        ):
            keys.append(f"{prefix}/{name}.parquet")
            store.put_table(keys[-1], table)
        counts = {"substitutions": result.n_substitutions, "unique_formulas": result.n_unique}
        return keys, counts, {"substitute": time.perf_counter() - start}

    return run_cached(store, "substitute", config.substitution, [proto_key], step)


def shard_rows(n_rows: int, shard: int, shards: int) -> np.ndarray:
    """Row indices of ``shard`` out of ``shards`` contiguous blocks of ``n_rows``."""
    return np.array_split(np.arange(n_rows), shards)[shard]


def run_predict_shard(
    store: ArtifactStore,
    config: CampaignConfig,
    substituted: StageManifest,
    shard: int,
    backend: StageBackend,
) -> StageManifest:
    """Stage 2 on one shard of the unique formulas."""
    formulas_key = output_key(substituted, "substitute", "formulas")
    shards = config.composition.shards
    if not 0 <= shard < shards:
        raise StageFailed(f"shard {shard} is outside 0..{shards - 1}")

    def step(store: ArtifactStore, prefix: str):
        start = time.perf_counter()
        formulas = store.get_table(formulas_key).column("formula").to_pylist()
        rows = shard_rows(len(formulas), shard, shards)
        frame = backend.predict([formulas[i] for i in rows], config)
        key = f"{prefix}/predictions.parquet"
        store.put_table(key, pa.Table.from_pandas(frame, preserve_index=False))
        return [key], {"formulas": len(frame), "errors": int(frame["error"].notna().sum())}, {
            "predict": time.perf_counter() - start
        }

    stage_config = {"composition": config.composition, "shard": shard, "of": shards}
    return run_cached(
        store, "predict", stage_config, [formulas_key], step, model_versions=model_versions(config)
    )


def run_screen(
    store: ArtifactStore,
    config: CampaignConfig,
    shards: list[StageManifest],
    backend: StageBackend,
    progress=None,
) -> StageManifest:
    """Stage 3 on the concatenated predictions of every shard (fan-in).

    ``progress(step, done, total)`` sees ``screen hull`` (formulas with E_f under the threshold)
    and ``screen window`` (formulas that passed E_hull and band gap). The row count
    ``charge_balanced`` is the formulas left by the charge-balance filter; with
    ``screening.charge_balance`` off it removes none and equals ``predicted`` (the stage's own
    funnel.json then has no such key).
    """
    keys = [output_key(m, "predict", "predictions") for m in shards]

    def step(store: ArtifactStore, prefix: str):
        start = time.perf_counter()
        predictions = pa.concat_tables([store.get_table(k) for k in keys]).to_pandas()
        relay = None if progress is None else (lambda sub, done, total: progress(f"screen {sub}", done, total))
        result = backend.screen(predictions, config, relay)
        table_key, funnel_key = f"{prefix}/screen.parquet", f"{prefix}/funnel.json"
        store.put_table(table_key, pa.Table.from_pandas(result.table, preserve_index=False))
        store.put_json(funnel_key, result.funnel)
        counts = dict(result.funnel)
        counts.setdefault("charge_balanced", counts["predicted"])  # filter off: nothing removed
        return [table_key, funnel_key], counts, {"screen": time.perf_counter() - start}

    return run_cached(store, "screen", config.screening, keys, step)


def ranked_survivors(screen: pd.DataFrame) -> pd.DataFrame:
    """The formulas that passed the screen, best first: highest oxidation limit phi_ox (V vs
    Li/Li+), then lowest E_above_hull (eV/atom), then formula (the order of candidates.csv)."""
    survivors = screen[screen["passed"]]
    return survivors.sort_values(["phi_ox", "e_above_hull", "formula"], ascending=[False, True, True],
                                 kind="stable").reset_index(drop=True)


#: The screen's columns a generated structure carries (its formula's rank and values).
_SCREEN_COLUMNS = ("e_above_hull", "phi_ox")
#: ``generated.parquet``: the accepted samples (``prototype_id`` is always null: a generated
#: structure has no prototype; volumes in Å^3 and Å^3/atom).
GENERATED_SCHEMA = pa.schema([
    ("id", pa.string()), ("formula", pa.string()), ("sample", pa.int64()), ("origin", pa.string()),
    ("prototype_id", pa.string()), ("screen_rank", pa.int64()), ("e_above_hull", pa.float64()),
    ("phi_ox", pa.float64()), ("cif", pa.string()), ("num_atoms", pa.int64()), ("volume_a3", pa.float64()),
    ("volume_per_atom_a3", pa.float64()),
])
#: ``rejected.parquet``: a refused formula (``sample`` null: unknown element, too many atoms) or a
#: rejected sample (degenerate cell, or the sanity filter's reason).
REJECTED_SCHEMA = pa.schema([
    ("formula", pa.string()), ("sample", pa.int64()), ("kind", pa.string()), ("reason", pa.string()),
])
#: ``kind`` of a sample the sanity filter rejected.
UNPHYSICAL = "Unphysical"


def generated_id(formula: str, sample: int) -> str:
    """``"generated|<formula>|<sample>"``: never a substitution id (those start with a prototype id)."""
    from htvs.structures.parallel import GENERATED
    from htvs.structures.records import ID_SEPARATOR

    return ID_SEPARATOR.join((GENERATED, formula, str(sample)))


def _generated_part(rows: list, formulas: list[str], sanity) -> pa.Table:
    """One batch of stage 5's rows (:func:`~htvs.generation.stage.generate_structures`' output
    for ``formulas``), sanity-checked, as one table: accepted and rejected rows, ``reason`` null
    for the accepted. A refused formula (kind InvalidInput) has a null ``sample``; a degenerate
    sample (kind StageFailed) the number of its place among its formula's rows."""
    from htvs.errors import RowError
    from htvs.generation.sanity import sanity_reason
    from htvs.prototypes.readers import parse_cif

    names = ("formula", "sample", "cif", "num_atoms", "volume_a3", "kind", "reason")
    out: dict[str, list] = {name: [] for name in names}
    seen = [0] * len(formulas)  # rows so far of each formula (they come in sample order)

    def add(index, sample, cif=None, num_atoms=None, volume=None, kind=None, reason=None) -> None:
        seen[index] += 1
        for name, value in zip(names, (formulas[index], sample, cif, num_atoms, volume, kind, reason)):
            out[name].append(value)

    index = 0
    for row in rows:
        if isinstance(row, RowError):
            index = row.index
            add(index, seen[index] if row.kind == "StageFailed" else None, kind=row.kind, reason=row.message)
            continue
        while formulas[index].strip() != row.formula:
            index += 1
        try:  # the sample itself where the row has it: a CIF reader merges nearly coincident atoms
            reason = sanity_reason(row.structure if row.structure is not None else parse_cif(row.cif)[0], sanity)
        except InvalidInput as exc:
            reason = f"its CIF cannot be read: {exc}"
        if reason is None:
            add(index, row.sample, row.cif, row.num_atoms, row.volume_a3)
        else:
            add(index, row.sample, kind=UNPHYSICAL, reason=f"sample {row.sample} of {row.formula!r}: {reason}")
    types = {"sample": pa.int64(), "num_atoms": pa.int64(), "volume_a3": pa.float64()}
    return pa.table({name: pa.array(out[name], types.get(name, pa.string())) for name in names})


def run_generate(
    store: ArtifactStore, config: CampaignConfig, screened: StageManifest, backend: StageBackend, progress=None
) -> StageManifest:
    """Stage 5: structures generated for the best ``generation.max_formulas`` screened formulas.

    The survivors of stage 3 are ranked as candidates.csv ranks them (:func:`ranked_survivors`);
    each of the first ``max_formulas`` gets ``n_samples`` samples, ``batch_crystals`` crystals
    per denoising loop (batch ``k`` seeded ``generation.seed + k``; a finished batch is kept in
    the store, so a killed stage resumes). Every sample passes the physical sanity filter
    (:mod:`htvs.generation.sanity`) or is rejected. ``progress(step, done, total)`` sees
    ``generate`` in samples asked for (``requested_samples``: formulas x ``n_samples``, refused
    formulas included); ``generated_samples`` counts the samples drawn.

    Writes ``generated.parquet`` (:data:`GENERATED_SCHEMA`, ``origin`` "generated", null
    ``prototype_id``) and ``rejected.parquet`` (:data:`REJECTED_SCHEMA`: formulas the generator
    refused, e.g. an element it does not know, and rejected samples, each with its reason). With
    ``generation.enabled`` false both are empty and nothing is loaded.
    """
    from htvs.campaign.config import sanity_config
    from htvs.structures.parallel import GENERATED

    section = config.generation
    screen_key = output_key(screened, "screen", "screen")

    def step(store: ArtifactStore, prefix: str):
        start = time.perf_counter()
        ranked = ranked_survivors(store.get_table(screen_key).to_pandas())
        chosen = ranked.head(section.max_formulas) if section.enabled else ranked.iloc[:0]
        formulas = [str(f) for f in chosen["formula"]]
        per_batch = max(1, section.batch_crystals // section.n_samples)
        batches = [list(range(lo, min(lo + per_batch, len(formulas)))) for lo in range(0, len(formulas), per_batch)]
        parts = StoredParts(store, f"{prefix}/parts")
        sanity = sanity_config(config)
        total = len(formulas) * section.n_samples
        tables = []
        for k, batch in enumerate(batches):
            if progress is not None:
                progress("generate", batch[0] * section.n_samples, total)
            table = parts.load(k)
            if table is None:
                names = [formulas[i] for i in batch]
                table = _generated_part(backend.generate(names, config, section.seed + k), names, sanity)
                parts.save(k, table)
            tables.append(table)
        frame = (pa.concat_tables(tables).to_pandas() if tables else
                 pd.DataFrame(columns=["formula", "sample", "cif", "num_atoms", "volume_a3", "kind", "reason"]))
        accepted = frame[frame["reason"].isna()].reset_index(drop=True)
        rejected = frame[frame["reason"].notna()].reset_index(drop=True)
        ranks = {f: i + 1 for i, f in enumerate(formulas)}
        values = chosen.set_index("formula")
        generated = pa.table({
            "id": [generated_id(f, int(k)) for f, k in zip(accepted["formula"], accepted["sample"])],
            "formula": accepted["formula"].tolist(),
            "sample": accepted["sample"].astype("int64").tolist(),
            "origin": [GENERATED] * len(accepted),
            "prototype_id": [None] * len(accepted),
            "screen_rank": [ranks[f] for f in accepted["formula"]],
            **{c: [float(values.at[f, c]) for f in accepted["formula"]] for c in _SCREEN_COLUMNS},
            "cif": accepted["cif"].tolist(),
            "num_atoms": accepted["num_atoms"].astype("int64").tolist(),
            "volume_a3": accepted["volume_a3"].astype(float).tolist(),
            "volume_per_atom_a3": (accepted["volume_a3"].astype(float) / accepted["num_atoms"].astype(float)).tolist(),
        }, schema=GENERATED_SCHEMA)
        refused = pa.table({
            "formula": rejected["formula"].tolist(),
            "sample": [None if pd.isna(v) else int(v) for v in rejected["sample"]],
            "kind": rejected["kind"].tolist(), "reason": rejected["reason"].tolist(),
        }, schema=REJECTED_SCHEMA)
        generated_key, rejected_key = f"{prefix}/generated.parquet", f"{prefix}/rejected.parquet"
        store.put_table(generated_key, generated)
        store.put_table(rejected_key, refused)
        parts.clear()
        drawn = len(accepted) + int(rejected["sample"].notna().sum())
        if progress is not None:
            progress("generate", total, total)
        counts = {"generated_formulas": len(formulas), "requested_samples": total, "generated_samples": drawn,
                  "generated_accepted": len(accepted), "refused_formulas": int(rejected["sample"].isna().sum()),
                  "rejected_samples": int(rejected["sample"].notna().sum())}
        return [generated_key, rejected_key], counts, {"generate": time.perf_counter() - start}

    return run_cached(store, "generate", section, [screen_key], step,
                      model_versions=generator_model_version(config))


@dataclass(frozen=True)
class StoredParts:
    """Finished parts of a stage, as tables kept in the store under ``prefix`` until the stage
    completes, so that a killed stage resumes from them (stages 4 and 6; stage 4's
    :class:`~htvs.structures.parallel.PartCheckpoint`)."""

    store: ArtifactStore
    prefix: str

    def _key(self, index: int) -> str:
        return f"{self.prefix}/{index:06d}.parquet"

    def load(self, index: int) -> pa.Table | None:
        """Part ``index``, or None when it is not kept or cannot be read (then it is recomputed)."""
        key = self._key(index)
        if not self.store.exists(key):
            return None
        try:
            return self.store.get_table(key)
        except Exception:  # noqa: BLE001 - a damaged part is recomputed, never trusted
            return None

    def save(self, index: int, table: pa.Table) -> None:
        self.store.put_table(self._key(index), table)

    def clear(self) -> None:
        for key in self.store.list(self.prefix + "/"):
            self.store.delete(key)


def _structure_items(rows: pd.DataFrame) -> list[tuple[str, object]]:
    """``(id, Structure)`` from the stored arrays where a row has them, else ``(id, CIF text)``."""
    from htvs.structures.parallel import structure_from_arrays

    if "lattice_matrix" not in rows.columns:
        return list(zip(rows["id"], rows["cif"]))
    items: list[tuple[str, object]] = []
    for row_id, cif, lattice, species, coords in zip(
        rows["id"], rows["cif"], rows["lattice_matrix"], rows["species"], rows["frac_coords"]
    ):
        if lattice is None or species is None or coords is None:
            items.append((row_id, cif))
            continue
        try:
            items.append((row_id, structure_from_arrays(lattice, species, coords)))
        except InvalidInput:
            items.append((row_id, cif))  # the CIF is the record; the arrays only a shortcut
    return items


def _relay(progress, step: str, total: int):
    """A ``done -> None`` callback reporting ``(step, done, total)`` to ``progress`` (or None)."""
    if progress is None:
        return None
    return lambda done: progress(step, done, total)


def read_prototypes(store: ArtifactStore, key: str) -> dict:
    """The stored prototypes as ``Prototype`` records, by id."""
    from htvs.prototypes import Prototype
    from htvs.prototypes.readers import structure_from_json

    text = gzip.decompress(store.get_bytes(key)).decode()
    out = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["id"]] = Prototype.from_structure(
                row["id"], row["source"], structure_from_json(row["structure"]), row.get("provenance")
            )
    return out


def run_structures(
    store: ArtifactStore,
    config: CampaignConfig,
    prototypes: StageManifest,
    substituted: StageManifest,
    screened: StageManifest,
    generated: StageManifest,
    progress=None,
) -> StageManifest:
    """Stage 4: materialize every substitution of a surviving formula, add stage 5's generated
    structures, then deduplicate them together.

    Formulas are split into parts processed by ``HTVS_WORKERS`` processes (default: one per
    core), with the result of one process (see :mod:`htvs.structures.parallel`). A generated
    structure comes after the substituted ones of its formula, so where the two match the
    substituted one is kept and the generated one recorded as its duplicate.
    ``progress(step, done, total)`` sees ``structures`` in rows (substitutions and generated).

    Writes ``structures.parquet``: one row per structure (``id``, ``formula``, ``prototype_id`` —
    null for a generated structure —, ``origin`` — ``substitution`` or ``generated`` —,
    ``duplicate_of`` — null for the representatives — and, for the representatives, ``cif`` and
    the structure as ``lattice_matrix`` / ``species`` / ``frac_coords`` arrays, Å and
    fractional), plus per-row errors in ``errors.json``. Its counts add ``generated_structures``,
    ``generated_unique`` and ``generated_matched_substitution`` (generated structures kept as
    duplicates of a substituted one).
    """
    from htvs.settings import Settings
    from htvs.structures import DedupeConfig, MaterializeConfig, select_for_survivors
    from htvs.structures.parallel import GENERATED, SUBSTITUTION, build_structures

    section = config.structures
    keys = [
        output_key(prototypes, "prototypes", "prototypes"),
        output_key(substituted, "substitute", "substitutions"),
        output_key(screened, "screen", "screen"),
        output_key(generated, "generate", "generated"),
    ]

    def step(store: ArtifactStore, prefix: str):
        start = time.perf_counter()
        screen = store.get_table(keys[2]).to_pandas()
        survivors = screen.loc[screen["passed"], "formula"].tolist()
        rows = select_for_survivors(store.get_table(keys[1]).to_pandas(), survivors)
        extra = store.get_table(keys[3]).select(["id", "formula", "cif"]).to_pandas()
        if len(rows) + len(extra) > section.max_structures:
            raise InvalidInput(
                f"structures.max_structures is {section.max_structures} but {len(rows)} substitutions survived "
                f"screening and {len(extra)} structures were generated; raise the limit or tighten the thresholds"
            )
        parts = StoredParts(store, f"{prefix}/parts")
        table, errors, cpu = build_structures(
            read_prototypes(store, keys[0]), rows, MaterializeConfig(rescale_volume=section.rescale_volume),
            DedupeConfig(ltol=section.ltol, stol=section.stol, angle_tol=section.angle_tol),
            workers=Settings.from_env().workers, progress=_relay(progress, "structures", len(rows) + len(extra)),
            checkpoint=parts, generated=extra,
        )
        table_key, errors_key = f"{prefix}/structures.parquet", f"{prefix}/errors.json"
        store.put_table(table_key, table)
        store.put_json(errors_key, errors)
        parts.clear()
        unique = table.num_rows - table.column("cif").null_count
        frame = table.select(["id", "origin", "duplicate_of"]).to_pandas()
        origin = frame.set_index("id")["origin"]
        made = frame[frame["origin"] == GENERATED]
        counts = {"structures": table.num_rows, "unique_structures": unique, "errors": len(errors),
                  "generated_structures": len(made), "generated_unique": int(made["duplicate_of"].isna().sum()),
                  "generated_matched_substitution": int(
                      (made["duplicate_of"].map(origin) == SUBSTITUTION).sum())}
        timings = {"build": time.perf_counter() - start, "materialize_cpu": cpu["materialize"],
                   "dedupe_cpu": cpu["dedupe"]}
        return [table_key, errors_key], counts, timings

    return run_cached(store, "structures", section, keys, step)


def run_conductivity(
    store: ArtifactStore, config: CampaignConfig, structures: StageManifest, backend: StageBackend,
    progress=None,
) -> StageManifest:
    """Stage 6: the GNN ensemble on every unique structure of the relax stage's ``structures.parquet``
    (stage 4's structures when relax is off; the relaxed, stable ones when it is on).

    Writes ``conductivity.parquet``: ``id``, ``formula``, ``prototype_id``, ``origin``, ``log10_sigma_mean``,
    ``log10_sigma_std`` (log10 S/cm at 300 K), ``p_superionic`` (P(sigma >= 1e-4 S/cm)),
    ``shortlisted`` (p_superionic >= conductivity.min_p_superionic) and ``error`` (null when
    predicted); rows are sorted by ``p_superionic`` then ``log10_sigma_mean``, best first.
    """
    from htvs.conductivity.predict import ConductivityPrediction

    section = config.conductivity
    key = output_key(structures, "relax", "structures")
    chunk, block = 256, 4096  # a block's scores are kept in the store: a killed stage resumes

    def score(rows: pd.DataFrame, done: int, total: int) -> pd.DataFrame:
        records = []
        for lo in range(0, len(rows), chunk):
            records += backend.conductivity(_structure_items(rows.iloc[lo: lo + chunk]), config)
            if progress is not None:
                progress("conductivity", done + min(lo + chunk, len(rows)), total)
        ok = [isinstance(r, ConductivityPrediction) for r in records]
        return pd.DataFrame({
            "id": rows["id"].to_numpy(), "formula": rows["formula"].to_numpy(),
            "prototype_id": rows["prototype_id"].to_numpy(), "origin": rows["origin"].to_numpy(),
            "log10_sigma_mean": [r.log10_sigma_mean if good else np.nan for r, good in zip(records, ok)],
            "log10_sigma_std": [r.log10_sigma_std if good else np.nan for r, good in zip(records, ok)],
            "p_superionic": [r.p_superionic if good else np.nan for r, good in zip(records, ok)],
            "error": [None if good else r.message for r, good in zip(records, ok)],
        })

    def step(store: ArtifactStore, prefix: str):
        start = time.perf_counter()
        table = store.get_table(key)
        columns = ["id", "formula", "prototype_id", "origin", "duplicate_of", "cif"]
        columns += [c for c in ("lattice_matrix", "species", "frac_coords") if c in table.schema.names]
        table = table.select(columns).to_pandas()
        unique = table[table["duplicate_of"].isna() & table["cif"].notna()].reset_index(drop=True)
        del table
        parts = StoredParts(store, f"{prefix}/parts")
        frames = []
        if progress is not None:
            progress("conductivity", 0, len(unique))
        for lo in range(0, len(unique), block):
            kept = parts.load(lo // block)
            frame = kept.to_pandas() if kept is not None else None
            if frame is None or len(frame) != len(unique.iloc[lo: lo + block]):
                frame = score(unique.iloc[lo: lo + block], lo, len(unique))
                parts.save(lo // block, pa.Table.from_pandas(frame, preserve_index=False))
            frames.append(frame)
            if progress is not None:
                progress("conductivity", min(lo + block, len(unique)), len(unique))
        columns = ["id", "formula", "prototype_id", "origin", "log10_sigma_mean", "log10_sigma_std", "p_superionic",
                   "error"]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        ok = frame["error"].isna().to_numpy()
        frame["shortlisted"] = frame["p_superionic"].fillna(-1.0) >= section.min_p_superionic
        frame = frame.sort_values(["p_superionic", "log10_sigma_mean"], ascending=False, na_position="last")
        out = f"{prefix}/conductivity.parquet"
        store.put_table(out, pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False))
        parts.clear()
        counts = {"scored_structures": int(ok.sum()), "superionic_shortlist": int(frame["shortlisted"].sum()),
                  "errors": int(len(ok) - ok.sum())}
        return [out], counts, {"conductivity": time.perf_counter() - start}

    return run_cached(store, "conductivity", section, [key], step,
                      model_versions=conductivity_model_version(config))


#: Columns of ``relax.parquet`` (units: eV/atom, eV/Å; ``decomposition``: JSON
#: ``[[formula, atomic fraction], ...]``; ``origin``: ``substitution`` or ``generated``).
RELAX_COLUMNS = (
    "id", "formula", "prototype_id", "origin", "relaxed_formula", "energy_per_atom_eV", "e_form", "e_above_hull",
    "decomposition", "converged", "n_steps", "max_force_eV_per_A", "stable", "error",
)  # fmt: skip
#: Structures relaxed per stored part (a killed stage resumes from the finished parts).
RELAX_PART = 64


def relax_model_version(config: CampaignConfig) -> dict[str, str]:
    """CHGNet version and weights hash: part of the relax stage's cache key when it is enabled."""
    if not config.relax.enabled:
        return {}
    from htvs.relax.reference import model_key

    return {"chgnet": model_key()}


def _relax_part(rows: pd.DataFrame, model, hull, config: CampaignConfig) -> pa.Table:
    """Relax ``rows`` (unique structures) together; one row per structure with its relaxed
    structure's CIF and arrays (null when refused or failed)."""
    from htvs.relax.batch import BatchRelaxConfig
    from htvs.relax.pipeline import relax_and_assess
    from htvs.structures.parallel import structure_arrays

    section = config.relax
    items = []
    for row_id, item in _structure_items(rows):
        if isinstance(item, str):
            from htvs.errors import HTVSError
            from htvs.prototypes.readers import parse_cif

            try:
                parsed = parse_cif(item, section.max_atoms)
                item = parsed[0] if len(parsed) == 1 else f"{row_id}: the CIF holds {len(parsed)} structures"
            except HTVSError as exc:
                item = f"{row_id}: {exc}"
        items.append((row_id, item))
    settings = BatchRelaxConfig(fmax_ev_per_angstrom=section.fmax_ev_per_angstrom, max_steps=section.max_steps,
                                batch_size=section.batch_size)
    outcomes = relax_and_assess(items, model, hull, settings, max_atoms=section.max_atoms)
    out: dict[str, list] = {name: [] for name in (*RELAX_COLUMNS, "cif", "lattice_matrix", "species", "frac_coords")}
    for (_, row), outcome in zip(rows.iterrows(), outcomes):
        st = outcome.stability
        arrays = structure_arrays(outcome.structure) if outcome.structure is not None else (None, None, None)
        values = {
            "id": row["id"], "formula": row["formula"], "prototype_id": row["prototype_id"], "origin": row["origin"],
            "relaxed_formula": st.formula if st else None,
            "energy_per_atom_eV": st.energy_per_atom_ev if st else None,
            "e_form": st.e_form_ev_per_atom if st else None, "e_above_hull": st.e_above_hull_ev_per_atom if st else None,
            "decomposition": json.dumps([[f, x] for f, x in st.decomposition]) if st else None,
            "converged": bool(outcome.converged), "n_steps": int(outcome.n_steps),
            "max_force_eV_per_A": None if np.isnan(outcome.max_force_ev_per_angstrom)
            else float(outcome.max_force_ev_per_angstrom),
            "stable": bool(st is not None and st.e_above_hull_ev_per_atom <= section.max_e_above_hull_ev_per_atom),
            "error": outcome.error,
            "cif": outcome.structure.to(fmt="cif") if outcome.structure is not None else None,
            "lattice_matrix": arrays[0], "species": arrays[1], "frac_coords": arrays[2],
        }
        for name, value in values.items():
            out[name].append(value)
    types = {"lattice_matrix": pa.list_(pa.float64()), "species": pa.list_(pa.string()),
             "frac_coords": pa.list_(pa.float64()), "energy_per_atom_eV": pa.float64(), "e_form": pa.float64(),
             "e_above_hull": pa.float64(), "max_force_eV_per_A": pa.float64(), "converged": pa.bool_(),
             "stable": pa.bool_(), "n_steps": pa.int64()}
    return pa.table({name: pa.array(values, type=types.get(name, pa.string())) for name, values in out.items()})


def run_relax(
    store: ArtifactStore, config: CampaignConfig, structures: StageManifest, progress=None,
) -> StageManifest:
    """Between stages 4 and 6: relax every unique structure with CHGNet and keep the stable ones.

    Enabled (``relax.enabled``): the ``relax.max_structures`` unique structures of stage 4 with
    the fewest sites (all of them below the cap) are relaxed (cell + positions, batched FIRE,
    :mod:`htvs.relax`; the others are passed on unrelaxed, recorded as such in
    ``relax.parquet``), placed on the CHGNet hull of
    their chemical system (E_f, E_hull, decomposition on one energy scale) and kept when
    E_hull <= ``relax.max_e_above_hull_ev_per_atom``. A refused structure (disordered, Li-free,
    over ``max_atoms``, an element outside the MP snapshot) or a failed relaxation (non-finite
    energies, atoms collapsing closer than 0.5 Å) gets an error row; the others go on.

    Writes ``structures.parquet`` — stage 4's columns, the kept structures with their RELAXED
    CIF and arrays (duplicates of a kept structure follow it) — which stage 6 reads, and
    ``relax.parquet`` (:data:`RELAX_COLUMNS`, one row per unique structure considered, with its
    ``origin``). Disabled: stage 4's table passes through unchanged and ``relax.parquet`` is
    empty. ``progress(step, done, total)`` sees ``relax`` in structures.
    """
    section = config.relax
    key = output_key(structures, "structures", "structures")

    def step(store: ArtifactStore, prefix: str):
        start = time.perf_counter()
        table = store.get_table(key)
        table_key, relax_key = f"{prefix}/structures.parquet", f"{prefix}/relax.parquet"
        if not section.enabled:
            store.put_table(table_key, table)
            store.put_table(relax_key, pa.Table.from_pandas(pd.DataFrame(columns=list(RELAX_COLUMNS)),
                                                            preserve_index=False))
            counts = {"relaxed": 0, "relaxed_stable": 0, "errors": 0, "passed_unrelaxed": 0}
            return [table_key, relax_key], counts, {"relax": 0.0}
        frame = table.to_pandas()
        unique = frame[frame["duplicate_of"].isna() & frame["cif"].notna()].reset_index(drop=True)
        # under a cap, the cheapest first: the structures with the fewest sites (ties: stage-4 order)
        sites = [len(x) if x is not None else np.inf for x in unique.get("species", pd.Series([None] * len(unique)))]
        order = np.argsort(np.asarray(sites, dtype=float), kind="stable")
        chosen = unique.iloc[np.sort(order[: section.max_structures])].reset_index(drop=True)
        skipped = unique.iloc[np.sort(order[section.max_structures:])].reset_index(drop=True)
        parts = StoredParts(store, f"{prefix}/parts")
        tables = []
        model = hull = None
        if progress is not None:
            progress("relax", 0, len(chosen))
        for lo in range(0, len(chosen), RELAX_PART):
            rows = chosen.iloc[lo: lo + RELAX_PART]
            kept = parts.load(lo // RELAX_PART)
            if kept is None or kept.num_rows != len(rows):
                if model is None:
                    import torch

                    from htvs.relax.reference import ChgnetHull
                    from htvs.validation.mlip import shared_chgnet

                    torch.set_num_threads(section.threads)
                    model = shared_chgnet("cpu")
                    hull = ChgnetHull(model, section.cache_dir)
                kept = _relax_part(rows, model, hull, config)
                parts.save(lo // RELAX_PART, kept)
            tables.append(kept)
            if progress is not None:
                progress("relax", min(lo + RELAX_PART, len(chosen)), len(chosen))
        done = pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(
            columns=[*RELAX_COLUMNS, "cif", "lattice_matrix", "species", "frac_coords"])
        report = done[list(RELAX_COLUMNS)]
        if len(skipped):
            extra = skipped[["id", "formula", "prototype_id", "origin"]].copy()
            extra["converged"], extra["n_steps"], extra["stable"] = False, 0, False
            extra["error"] = f"not relaxed: beyond relax.max_structures = {section.max_structures}; passed on as is"
            report = pd.concat([report, extra], ignore_index=True)[list(RELAX_COLUMNS)]
        store.put_table(relax_key, pa.Table.from_pandas(report, preserve_index=False))
        stable = done[done["stable"].astype(bool)].set_index("id")
        passed = set(stable.index) | set(skipped["id"])
        keep = frame["id"].isin(passed) | frame["duplicate_of"].isin(passed)
        out = frame[keep].reset_index(drop=True)
        for column in ("cif", "lattice_matrix", "species", "frac_coords"):
            if column in out.columns:
                relaxed = stable[column].to_dict()  # the relaxed structure of a kept representative
                out[column] = [relaxed[i] if i in relaxed else old for i, old in zip(out["id"], out[column])]
        store.put_table(table_key, pa.Table.from_pandas(out, schema=table.schema, preserve_index=False))
        parts.clear()
        ok = done["error"].isna()
        counts = {"relaxed": int(ok.sum()), "relaxed_stable": int((ok & done["stable"].astype(bool)).sum()),
                  "errors": int((~ok).sum()), "passed_unrelaxed": len(skipped)}
        return [table_key, relax_key], counts, {"relax": time.perf_counter() - start}

    return run_cached(store, "relax", section, [key], step, model_versions=relax_model_version(config))
