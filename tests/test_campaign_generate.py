"""Stage 5 in the campaign: the ``generate`` step, its sanity filter, and ``origin`` from stage 4
to the report.

Most tests stand a model-free generator in for the shipped one (:class:`GridGenerator`), so that
they hold whichever generator is shipped; the tests of the shipped model pick formulas whose
elements it knows (``load_generator().elements``) and assert no sampled number.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from typer.testing import CliRunner

from htvs.campaign import load_campaign, run_campaign, run_step
from htvs.campaign.runner import FUNNEL_ORDER
from htvs.campaign.stages import GENERATED_SCHEMA, REJECTED_SCHEMA, InProcessBackend, ranked_survivors
from htvs.cli import app
from htvs.errors import InvalidInput, RowError
from htvs.formula import parse_composition
from htvs.generation.sanity import SanityConfig, sanity_reason
from htvs.generation.stage import GeneratedStructure
from htvs.store import open_store
from test_campaign import write_config
from tiny_models import tiny_model_pair

pytestmark = pytest.mark.timeout(600)


def grid_structure(formula: str, volume_per_atom_a3: float = 20.0) -> Structure:
    """The atoms of ``formula`` on a cubic grid of a cubic cell of ``volume_per_atom_a3``: a
    crystal the sanity filter accepts (neighbours >= 1.7 Å apart for up to 64 atoms)."""
    symbols = [str(e) for e, n in parse_composition(formula).items() for _ in range(int(round(n)))]
    side = math.ceil(len(symbols) ** (1 / 3))
    grid = [(i / side, j / side, k / side) for i in range(side) for j in range(side) for k in range(side)]
    edge = (volume_per_atom_a3 * len(symbols)) ** (1 / 3)
    return Structure(Lattice.cubic(edge), symbols, grid[: len(symbols)])


class GridGenerator(InProcessBackend):
    """Stage 5 without a model, three samples per formula: sample 0 its atoms on a grid (accepted),
    sample 1 with its first two atoms on one point (rejected by the sanity filter), sample 2 a
    copy of sample 0 (accepted, a duplicate of sample 0 in stage 4). A formula listed in
    ``refuse`` is refused as the generator refuses an unknown element."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.refuse = refuse
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, formulas, config, seed):
        self.calls.append((list(formulas), seed))
        assert config.generation.n_samples == 3
        rows: list = []
        for index, formula in enumerate(formulas):
            if formula in self.refuse:
                rows.append(RowError(index, formula, f"element X of {formula!r} is not known", "InvalidInput"))
                continue
            good = grid_structure(formula)
            bad = good.copy()
            bad.replace(1, bad[1].species, bad[0].frac_coords)
            for sample, structure in enumerate((good, bad, good)):
                rows.append(GeneratedStructure(formula, sample, str(CifWriter(structure)), len(structure),
                                               float(structure.volume), structure))
        return rows


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_model_pair(tmp_path_factory.mktemp("models"))


def generation(**settings) -> dict:
    return {"enabled": True, "max_formulas": 4, "n_samples": 3, **settings}


@pytest.fixture(scope="module")
def stub_run(tmp_path_factory, models):
    """A tiny campaign whose stage 5 is :class:`GridGenerator`; every structure shortlisted."""
    root = tmp_path_factory.mktemp("stub")
    path = write_config(root / "c.yaml", models, generation=generation(),
                        conductivity={"min_p_superionic": 0.0})
    config = load_campaign(path)
    backend = GridGenerator()
    store = open_store(root / "store")
    funnel = run_campaign(config, store, root / "out", backend=backend)
    screen_best = ranked_survivors(pd.read_parquet(root / "out" / "screen.parquet"))["formula"].head(4).tolist()
    return root / "out", funnel, backend, screen_best, config, store


def test_generate_takes_the_best_screened_formulas(stub_run) -> None:
    out, funnel, backend, best, _, _ = stub_run
    assert [formulas for formulas, _ in backend.calls] == [best]  # one batch, the screen's order
    generated = pd.read_parquet(out / "generated.parquet")
    assert list(generated.columns) == GENERATED_SCHEMA.names
    assert generated["origin"].eq("generated").all() and generated["prototype_id"].isna().all()
    assert list(zip(generated["formula"], generated["sample"])) == [(f, s) for f in best for s in (0, 2)]
    assert generated["screen_rank"].tolist() == [r for r in (1, 2, 3, 4) for _ in (0, 2)]
    assert generated["id"].is_unique and generated["id"].str.startswith("generated|").all()
    assert (generated["volume_per_atom_a3"] - 20.0).abs().max() < 1e-6
    for cif, formula in zip(generated["cif"], generated["formula"]):
        structure = Structure.from_str(cif, fmt="cif")
        assert structure.composition.reduced_formula == parse_composition(formula).reduced_formula
    assert (funnel["generated_formulas"], funnel["generated_samples"], funnel["generated_accepted"]) == (4, 12, 8)
    assert list(funnel) == [k for k in FUNNEL_ORDER if k in funnel]


def test_rejected_samples_carry_their_reasons(stub_run) -> None:
    out = stub_run[0]
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert list(rejected.columns) == REJECTED_SCHEMA.names
    assert rejected["sample"].tolist() == [1] * 4 and rejected["kind"].eq("Unphysical").all()
    for formula, reason in zip(rejected["formula"], rejected["reason"]):
        assert reason.startswith(f"sample 1 of {formula!r}: atoms too close: ")
        assert re.search(r"0 Å apart, below .* bond radii", reason)


def test_origin_follows_every_structure_to_the_report(stub_run) -> None:
    out, funnel, _, best, config, store = stub_run
    structures = pd.read_parquet(out / "structures.parquet")
    made = structures[structures["origin"] == "generated"]
    assert set(structures["origin"]) == {"substitution", "generated"}
    assert made["prototype_id"].isna().all() and structures.loc[structures["origin"] == "substitution",
                                                               "prototype_id"].notna().all()
    assert len(made) == 8 and set(made["formula"]) == set(best)
    # sample 2 is sample 0 again: kept as its duplicate, the substitution rows are unaffected
    copies = made[made["id"].str.endswith("|2")]
    assert (copies["duplicate_of"] == copies["id"].str.replace("|2", "|0", regex=False)).all()
    assert copies["cif"].isna().all()
    firsts = made[made["id"].str.endswith("|0")]
    assert firsts["duplicate_of"].isna().all() and firsts["cif"].notna().all()
    assert funnel["structures"] == len(structures) and funnel["unique_structures"] == structures["cif"].notna().sum()
    manifest = run_step(store, config, "structures")["structures"]
    assert manifest.row_counts["generated_structures"] == 8 and manifest.row_counts["generated_unique"] == 4
    assert manifest.row_counts["generated_matched_substitution"] == 0
    # stage 6 and the report keep each structure's origin
    scored = pd.read_parquet(out / "conductivity.parquet")
    assert scored.set_index("id")["origin"].to_dict() == (
        structures[structures["cif"].notna()].set_index("id")["origin"].to_dict())
    shortlist = pd.read_csv(out / "structure_candidates.csv")
    assert set(shortlist.loc[shortlist["id"].str.startswith("generated|"), "origin"]) == {"generated"}
    assert (shortlist["origin"] == "generated").sum() == 4
    # candidates' columns travel with the generated rows as with the substituted ones
    assert shortlist.loc[shortlist["origin"] == "generated", "phi_ox"].notna().all()
    assert "origin" in pd.read_parquet(out / "validation.parquet").columns


def test_a_rerun_is_a_cache_hit_and_a_refused_formula_does_not_stop_the_campaign(stub_run, tmp_path) -> None:
    out, _, _, best, config, store = stub_run
    again = GridGenerator()
    run_campaign(config, store, tmp_path / "again", backend=again)
    assert again.calls == []
    assert (tmp_path / "again" / "generated.parquet").read_bytes() == (out / "generated.parquet").read_bytes()
    refusing = GridGenerator(refuse=(best[1],))
    other = config.model_copy(update={"generation": config.generation.model_copy(update={"seed": 7})})
    funnel = run_campaign(other, store, tmp_path / "refused", backend=refusing)
    assert refusing.calls == [(best, 7)]
    rejected = pd.read_parquet(tmp_path / "refused" / "rejected.parquet")
    refused = rejected[rejected["sample"].isna()]
    assert refused[["formula", "kind"]].values.tolist() == [[best[1], "InvalidInput"]]
    assert funnel["generated_samples"] == 9 and funnel["generated_accepted"] == 6
    assert funnel["superionic_shortlist"] > 0


def test_batches_of_crystals_are_seeded_in_turn(tmp_path, models) -> None:
    path = write_config(tmp_path / "c.yaml", models, generation=generation(batch_crystals=6, seed=11))
    backend = GridGenerator()
    manifest = run_step(open_store(tmp_path / "store"), load_campaign(path), "generate", backend=backend)["generate"]
    assert [(len(formulas), seed) for formulas, seed in backend.calls] == [(2, 11), (2, 12)]
    assert manifest.row_counts["generated_accepted"] == 8


def test_disabled_generation_writes_empty_outputs(tmp_path, models) -> None:
    config = load_campaign(write_config(tmp_path / "c.yaml", models))
    assert not config.generation.enabled
    store = open_store(tmp_path / "store")
    backend = GridGenerator()
    manifest = run_step(store, config, "generate", backend=backend)["generate"]
    assert backend.calls == []
    assert manifest.row_counts["generated_formulas"] == manifest.row_counts["generated_samples"] == 0
    for key, schema in zip(sorted(manifest.output_keys), (GENERATED_SCHEMA, REJECTED_SCHEMA)):
        table = store.get_table(key)
        assert table.num_rows == 0 and table.schema.names == schema.names, key


def test_cli_runs_the_generate_step(tmp_path, models) -> None:
    # max_atoms 1: the shipped model is loaded but every formula is refused (no sampling)
    path = write_config(tmp_path / "c.yaml", models, generation=generation(max_atoms=1, n_samples=1))
    result = CliRunner().invoke(app, ["campaign", "stage", "generate", "--config", str(path), "--store",
                                      str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"step": "generate", "done": True}
    [manifest_path] = (tmp_path / "store" / "stages" / "generate").glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["row_counts"]["refused_formulas"] == 4
    rejected = pd.read_parquet(manifest_path.parent / "rejected.parquet")
    assert len(rejected) == 4 and rejected["sample"].isna().all()
    # the shipped model's first complaint: an element it does not know, or the atom count
    assert rejected["reason"].str.contains(
        "has no trained embedding|atoms in its cell, more than the limit max_atoms=1").all()


def test_stage_4_keeps_the_substituted_structure_when_a_generated_one_matches(prototypes) -> None:
    from htvs.structures import DedupeConfig, MaterializeConfig, materialize
    from htvs.structures.parallel import build_structures
    from htvs.substitution import SitePattern, SubstitutionConfig, enumerate_substitutions
    from htvs.substitution.tables import substitution_table

    patterns = [SitePattern(p.id, p.species_amounts) for p in prototypes.values()]
    table = substitution_table(enumerate_substitutions(patterns, SubstitutionConfig(
        element_pool=("Li", "S", "O", "F", "Cl", "P")))).to_pandas()
    rows = table.head(40).reset_index(drop=True)
    mc, dc = MaterializeConfig(), DedupeConfig()
    built = materialize(prototypes, rows.head(1), mc)[0]
    twin = built.structure.copy()
    twin.scale_lattice(twin.volume * 1.1)  # the same crystal, 10 % larger, sites in reverse order
    twin = Structure(twin.lattice, list(reversed(twin.species)), list(reversed(twin.frac_coords)))
    other = grid_structure("Li2S", 25.0)
    generated = pd.DataFrame({
        "id": ["generated|A|0", "generated|A|1", "generated|Li2S|0"],
        "formula": [built.formula, built.formula, "Li2S"],
        "cif": [str(CifWriter(twin)), str(CifWriter(grid_structure(built.formula))), str(CifWriter(other))],
    })
    plain, _, _ = build_structures(prototypes, rows, mc, dc, workers=1)
    merged, errors, _ = build_structures(prototypes, rows, mc, dc, workers=1, generated=generated)
    assert errors == []
    frame = merged.to_pandas()
    assert frame.head(len(rows)).drop(columns="origin").equals(plain.to_pandas().drop(columns="origin"))
    assert frame["origin"].tolist() == ["substitution"] * len(rows) + ["generated"] * 3
    made = frame.tail(3).set_index("id")
    assert made.at["generated|A|0", "duplicate_of"] == built.id  # the substituted one is kept
    assert pd.isna(made.at["generated|A|0", "cif"]) and pd.isna(made.at["generated|A|0", "prototype_id"])
    assert made[["duplicate_of"]].iloc[1:].isna().all().all() and made["cif"].iloc[1:].notna().all()
    # in parts and worker processes: the same table
    two, _, _ = build_structures(prototypes, rows, mc, dc, workers=2, part_rows=5, generated=generated)
    assert two.equals(merged)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_samples": 0}, "generation.n_samples: n_samples must be >= 1, got 0"),
        ({"n_samples": 101}, "generation.n_samples: n_samples must be <= 100, got 101"),
        ({"max_formulas": -3}, "generation.max_formulas: max_formulas must be >= 0, got -3"),
        ({"seed": -1}, "generation.seed: seed must be >= 0, got -1"),
        ({"step_lr": "fast"}, "generation.step_lr"),
        ({"enabled": "maybe"}, "generation.enabled"),
        ({"min_distance_angstrom": 7}, "generation.min_distance_angstrom: min_distance_angstrom must be <= 5 Å, got 7"),
        ({"min_volume_per_atom_a3": 60, "max_volume_per_atom_a3": 30},
         "generation.min_volume_per_atom_a3 (60 Å^3/atom) must be below generation.max_volume_per_atom_a3 (30 Å^3/atom)"),
        ({"models": "/no/such/generator"}, "generation.models: no model_card.json in /no/such/generator"),
        ({"temperature": 3}, "unknown key 'generation.temperature'"),
    ],
)
def test_bad_generation_settings_are_refused_before_work(tmp_path, models, settings, message) -> None:
    path = write_config(tmp_path / "c.yaml", models, generation=generation(**settings))
    with pytest.raises(InvalidInput, match=re.escape(message)):
        load_campaign(path)


@pytest.fixture(scope="module")
def shipped():
    from htvs.generation.stage import load_generator

    return load_generator()


def test_an_element_the_generator_does_not_know_is_a_rejection(tmp_path, models, shipped) -> None:
    from pymatgen.core import Element

    pool = ("Li", "S", "O", "F", "Cl", "P", "N", "Se")  # write_config's pool
    blind = replace(shipped, elements=frozenset(shipped.elements - {Element(s).Z for s in pool[1:]}))
    path = write_config(tmp_path / "c.yaml", models, generation=generation(n_samples=1))
    results = run_step(open_store(tmp_path / "store"), load_campaign(path), "structures",
                       backend=InProcessBackend(_generator=blind))
    assert results["generate"].row_counts["refused_formulas"] == 4
    rejected = open_store(tmp_path / "store").get_table(
        next(k for k in results["generate"].output_keys if k.endswith("rejected.parquet"))).to_pandas()
    first = Element.from_Z(min(blind.elements)).symbol
    for formula, reason in zip(rejected["formula"], rejected["reason"]):
        assert re.fullmatch(rf"element (S|O|F|Cl|P|N|Se) of {re.escape(repr(formula))} has no trained embedding in "
                            rf"the generator, which knows {len(blind.elements)} elements: {first}, .*", reason), reason
    assert results["structures"].row_counts["generated_structures"] == 0


@pytest.mark.slow
def test_the_shipped_generator_in_the_campaign(tmp_path, models, shipped) -> None:
    """The real sampler on formulas of elements it knows: every sample accepted or rejected with
    a reason, accepted ones of the right composition and passing the filter again."""
    from pymatgen.core import Element

    pool = [s for s in ("Li", "S", "O", "F", "N", "Cl", "P", "Se") if Element(s).Z in shipped.elements]
    assert {"Li", "S"} <= set(pool)
    path = write_config(tmp_path / "c.yaml", models, substitution={"element_pool": pool},
                        generation={"enabled": True, "max_formulas": 2, "n_samples": 2})
    config = load_campaign(path)
    store = open_store(tmp_path / "store")
    results = run_step(store, config, "structures")
    counts = results["generate"].row_counts
    assert counts["generated_formulas"] == 2 and counts["refused_formulas"] == 0
    assert counts["generated_samples"] == 4 == counts["generated_accepted"] + counts["rejected_samples"]
    keys = sorted(results["generate"].output_keys)
    generated, rejected = (store.get_table(k).to_pandas() for k in keys)
    assert rejected["reason"].str.len().gt(0).all()
    sanity = SanityConfig()
    for cif, formula in zip(generated["cif"], generated["formula"]):
        structure = Structure.from_str(cif, fmt="cif")
        assert structure.composition.reduced_formula == parse_composition(formula).reduced_formula
        assert sanity_reason(structure, sanity) is None
    structures = store.get_table(next(k for k in results["structures"].output_keys if k.endswith(".parquet")))
    assert structures.to_pandas()["origin"].eq("generated").sum() == counts["generated_accepted"]
