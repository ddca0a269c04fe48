"""Regression tests of fuzzing finds in the settings: physical settings bounded, config files
read safely.

* Unbounded lengths: ``production_ps=1e306`` overflowed (validate CLI, DFTRunnerService.Submit,
  campaign ``validation.production_ps``), ``timestep_fs=1e-300`` was accepted, ``ltol=1e300``
  failed inside the structure matcher. Every setting now has a range, named in the message.
* Config reading: a non-UTF-8 or UTF-16 file, a YAML nested 10k deep, a 5000-digit integer or an
  impossible date gave tracebacks; a repeated key was silently accepted (last wins).
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import grpc
import pytest
import yaml
from typer.testing import CliRunner

from htvs.campaign.config import (
    MAX_CONFIG_BYTES,
    load_campaign,
    nesting_depth,
    parse_campaign,
    parse_campaign_json,
    validate_campaign,
)
from htvs.cli import EXIT_BAD_INPUT, app
from htvs.errors import InvalidInput
from htvs.errors import MAX_SHOWN_CHARS, shown
from htvs.ranges import Range
from htvs.screening_config import PAPER_THRESHOLDS, CompositionScreenConfig
from htvs.structures.dedupe import DedupeConfig
from htvs.validation import AnalysisConfig, MDConfig, RelaxConfig, SupercellConfig, ValidationConfig
from htvs.validation.config import MAX_TOTAL_MD_STEPS

ROOT = Path(__file__).parent.parent
LICL = Path(__file__).parent / "data" / "validation" / "LiCl.cif"


# --------------------------------------------------------------------------- ranges and shown values


def test_range_messages_name_the_setting_value_and_range() -> None:
    production = Range(0.0, 100_000.0, "ps", low_open=True)
    with pytest.raises(InvalidInput, match=r"^production time must be <= 100000 ps, got 1e\+306 "
                                           r"\(allowed: \(0, 100000\] ps\)$"):
        production.check("production time", 1e306)
    with pytest.raises(InvalidInput, match=r"must be > 0 ps, got 0 "):
        production.check("production time", 0)
    for bad in (float("nan"), float("inf"), True, "40", None, [40]):
        with pytest.raises(InvalidInput, match="production time must be a finite number"):
            production.check("production time", bad)
    steps = Range(1, 10, integer=True)
    assert steps.check("n", 3.0) == 3 and isinstance(steps.check("n", 3.0), int)
    with pytest.raises(InvalidInput, match=r"n must be an integer, got 2.5 \(allowed: \[1, 10\]\)"):
        steps.check("n", 2.5)
    with pytest.raises(InvalidInput, match="n must be <= 10, got <an integer of about 1001 digits>"):
        steps.check("n", 10**1000)  # no "Exceeds the limit" from int -> str


def test_shown_values_are_bounded() -> None:
    looped: list = []
    looped.append(looped)
    bomb: list = ["x" * 10_000]
    for _ in range(30):
        bomb = [bomb] * 10  # 10^30 leaves if expanded
    for value in ("x" * 100_000, 10**100_000, looped, bomb, {"k" * 500: list(range(10_000))}):
        assert len(shown(value)) <= MAX_SHOWN_CHARS


# --------------------------------------------------------------------------- validation protocol


def test_the_fuzzing_reproducers_are_refused_naming_the_range() -> None:
    with pytest.raises(InvalidInput, match=r"production time must be <= 100000 ps, got 1e\+306 \(allowed: \(0, 100000\] ps\)"):
        MDConfig(production_ps=1e306)  # was OverflowError
    with pytest.raises(InvalidInput, match=r"timestep must be >= 0.1 fs, got 1e-300 \(allowed: \[0.1, 10\] fs\)"):
        MDConfig(timestep_fs=1e-300)  # was accepted: 10^304 steps
    with pytest.raises(InvalidInput, match="seed must be an integer, got inf"):
        MDConfig(seed=float("inf"))  # was OverflowError


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda v: MDConfig(temperatures_k=(v, 900.0)), "temperature"),
        (lambda v: MDConfig(timestep_fs=v), "timestep"),
        (lambda v: MDConfig(heat_ps=v), "heat time"),
        (lambda v: MDConfig(equilibrate_ps=v), "equilibrate time"),
        (lambda v: MDConfig(production_ps=v), "production time"),
        (lambda v: MDConfig(start_temperature_k=v), "start temperature"),
        (lambda v: MDConfig(thermostat_damping_fs=v), "thermostat damping"),
        (lambda v: MDConfig(thermostat_chain=v), "thermostat chain"),
        (lambda v: MDConfig(rescale_every_steps=v), "rescale interval"),
        (lambda v: MDConfig(record_every_steps=v), "record interval"),
        (lambda v: MDConfig(checkpoint_every_steps=v), "checkpoint interval"),
        (lambda v: MDConfig(seed=v), "seed"),
        (lambda v: RelaxConfig(fmax_ev_per_angstrom=v), "fmax"),
        (lambda v: RelaxConfig(max_steps=v), "max relax steps"),
        (lambda v: SupercellConfig(min_length_angstrom=v), "min supercell length"),
        (lambda v: SupercellConfig(min_atoms=v), "min atoms"),
        (lambda v: SupercellConfig(max_atoms=v), "max atoms"),
        (lambda v: AnalysisConfig(window_fractions=(v, 1.0)), "window fraction"),
        (lambda v: AnalysisConfig(min_obs=v), "min_obs"),
        (lambda v: AnalysisConfig(avg_nsteps=v), "avg_nsteps"),
        (lambda v: AnalysisConfig(target_temperature_k=v), "target temperature"),
        (lambda v: AnalysisConfig(n_bootstrap=v), "bootstrap draws"),
        (lambda v: AnalysisConfig(seed=v), "seed"),
    ],
)
@pytest.mark.parametrize("value", [1e306, -1e306, 10**400, float("nan"), float("-inf")])
def test_every_protocol_setting_is_bounded(build, named: str, value) -> None:
    with pytest.raises(InvalidInput) as err:
        build(value)
    message = str(err.value)
    assert message.startswith(named) and "(allowed: " in message and len(message) < 200


def test_the_total_md_steps_are_bounded() -> None:
    within = MDConfig(temperatures_k=(600, 800, 1000, 1200), timestep_fs=2.0, production_ps=40_000.0)
    assert within.total_steps * 4 <= MAX_TOTAL_MD_STEPS
    with pytest.raises(InvalidInput, match=r"the MD protocol is 400,028,000 steps .*more than 100,000,000"):
        MDConfig(temperatures_k=(600, 800, 1000, 1200), timestep_fs=1.0, production_ps=100_000.0)


def test_the_paper_protocol_stays_valid() -> None:
    config = ValidationConfig()
    assert config.md.temperatures_k == (600.0, 800.0, 1000.0, 1200.0) and config.md.timestep_fs == 2.0
    assert (config.md.heat_ps, config.md.equilibrate_ps, config.md.production_ps) == (2.0, 5.0, 40.0)
    assert (config.supercell.min_length_angstrom, config.supercell.max_atoms) == (8.0, 200)
    MDConfig(temperatures_k=(600, 900, 1200, 1500))  # the paper's full temperature span


def test_validation_config_refuses_odd_types_by_name() -> None:
    with pytest.raises(InvalidInput, match="device must be cpu, cuda, cuda:N or mps, got 3"):
        ValidationConfig(device=3)  # was AttributeError
    with pytest.raises(InvalidInput, match="temperatures must be a list, got 600.0"):
        MDConfig(temperatures_k=600.0)  # was TypeError
    with pytest.raises(InvalidInput, match="temperatures: at most 32"):
        MDConfig(temperatures_k=tuple(range(100, 2000, 10)))
    with pytest.raises(InvalidInput, match="temperatures: at most 32"):
        from htvs.validation import parse_temperatures

        parse_temperatures(",".join(["600"] * 10_000))


def test_cli_validate_refuses_unbounded_lengths() -> None:
    runner = CliRunner()
    for option, value, named in (
        ("--production-ps", "1e306", "production time must be <= 100000 ps, got 1e+306 (allowed: (0, 100000] ps)"),
        ("--timestep-fs", "1e-300", "timestep must be >= 0.1 fs"),
        ("--heat-ps", "inf", "heat time must be a finite number"),
        ("--seed", "-1", "seed must be >= 0"),
    ):
        result = runner.invoke(app, ["validate", str(LICL), option, value, "-q"])
        assert result.exit_code == EXIT_BAD_INPUT, result.output
        assert named in " ".join(result.output.split())


# --------------------------------------------------------------------------- DFT runner settings


def test_dft_runner_settings_inherit_the_bounds() -> None:
    from htvs.grpc.dft_runner_service import config_from_proto
    from htvs.grpc.gen import dft_runner_pb2 as pb

    for settings, named in (
        (pb.ValidationSettings(production_ps=1e306), "production time must be <= 100000 ps"),
        (pb.ValidationSettings(timestep_fs=1e-300), "timestep must be >= 0.1 fs"),
        (pb.ValidationSettings(max_relax_steps=10**9), "max relax steps must be <= 100000"),
        (pb.ValidationSettings(record_every_steps=2**31), "record interval must be <= 10000000"),
        (pb.ValidationSettings(heat_ps=float("nan")), "heat time must be a finite number"),
    ):
        with pytest.raises(InvalidInput, match=named):
            config_from_proto(settings)


@pytest.mark.grpc
@pytest.mark.timeout(120)
def test_dft_runner_submit_refuses_unbounded_lengths_on_loopback() -> None:
    from htvs.grpc.dft_runner_service import DFTRunnerServicer
    from htvs.grpc.gen import dft_runner_pb2 as pb
    from htvs.grpc.gen import dft_runner_pb2_grpc as pb_grpc
    from htvs.grpc.server import create_server
    from htvs.thermo import ReferenceHull

    def no_backend(name):
        raise AssertionError("a refused submission loads no backend")

    servicer = DFTRunnerServicer(ReferenceHull.bundled(), backend_loader=no_backend)
    server, port = create_server("127.0.0.1:0", servicer)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.DFTRunnerServiceStub(channel)
        for settings, named in (
            (pb.ValidationSettings(production_ps=1e306), "production time must be <= 100000 ps"),
            (pb.ValidationSettings(timestep_fs=1e-300), "timestep must be >= 0.1 fs"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.Submit(pb.SubmitRequest(id="LiCl", cif=LICL.read_text(), settings=settings), timeout=30)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert named in err.value.details()
    finally:
        channel.close()
        server.stop(None).wait()
        servicer.shutdown()


# --------------------------------------------------------------------------- deduplication and thresholds


@pytest.mark.parametrize(
    ("name", "value", "range_text"),
    [
        ("ltol", 1e300, "(0, 1]"),
        ("stol", 1e300, "(0, 1]"),
        ("angle_tol", 1e300, "(0, 30] degrees"),
        ("symprec", float("inf"), "(0, 1] Å"),
        ("spglib_angle_tolerance", -5.0, "(0, 30] degrees"),
    ],
)
def test_dedupe_tolerances_are_bounded(name: str, value: float, range_text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        DedupeConfig(**{name: value})
    assert str(err.value).startswith(name) and f"(allowed: {range_text})" in str(err.value)


def test_structure_service_dedupe_options_inherit_the_bounds() -> None:
    from htvs.grpc.gen import structure_pb2 as pb
    from htvs.grpc.structure_service import dedupe_config_from_proto

    with pytest.raises(InvalidInput, match=r"ltol must be <= 1, got 1e\+300"):
        dedupe_config_from_proto(pb.DedupeOptions(ltol=1e300))  # was INTERNAL in Deduplicate


@pytest.mark.grpc
@pytest.mark.timeout(120)
def test_deduplicate_with_a_huge_ltol_is_invalid_argument_on_loopback() -> None:
    from htvs.grpc.gen import structure_pb2 as pb
    from htvs.grpc.gen import structure_pb2_grpc as pb_grpc
    from htvs.grpc.server import create_server
    from htvs.grpc.structure_service import StructureServicer

    server, port = create_server("127.0.0.1:0", StructureServicer())
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        request = pb.DeduplicateRequest(structures=[pb.StructureData(id="a", cif=LICL.read_text())],
                                        options=pb.DedupeOptions(ltol=1e300))
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.StructureServiceStub(channel).Deduplicate(request, timeout=60)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "ltol" in err.value.details()
    finally:
        channel.close()
        server.stop(None).wait()


def test_screening_thresholds_are_bounded() -> None:
    assert CompositionScreenConfig() == PAPER_THRESHOLDS
    for name in ("max_e_form_ev_per_atom", "max_e_above_hull_ev_per_atom", "min_band_gap_ev", "min_phi_ox_v"):
        with pytest.raises(InvalidInput, match=rf"^{name} must be <= .*\(allowed: "):
            CompositionScreenConfig(**{name: 1e306})


# --------------------------------------------------------------------------- campaign config files


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("section", "field", "value", "named"),
    [
        ("validation", "production_ps", 1e306, "validation.production_ps: production_ps must be <= 100000 ps"),
        ("validation", "timestep_fs", 1e-300, "validation.timestep_fs: timestep_fs must be >= 0.1 fs"),
        ("validation", "heat_ps", -1.0, "validation.heat_ps: heat_ps must be >= 0 ps"),
        ("validation", "equilibrate_ps", ".inf", "validation.equilibrate_ps: equilibrate_ps must be a finite number"),
        ("validation", "temperatures_k", [600, 1e9], "validation.temperatures_k: temperatures_k[1] must be <= 5000 K"),
        ("validation", "min_supercell_length_angstrom", 1e9, "(allowed: [0, 100] Å)"),
        ("validation", "max_atoms", 10**9, "(allowed: [1, 100000])"),
        ("validation", "fmax_ev_per_angstrom", 0, "(allowed: (0, 10] eV/Å)"),
        ("validation", "relax_max_steps", 10**12, "(allowed: [0, 100000] steps)"),
        ("validation", "max_e_above_hull_ev_per_atom", -1, "(allowed: [0, 20] eV/atom)"),
        ("validation", "threads", 0, "(allowed: [1, 256])"),
        ("screening", "min_band_gap_ev", 1e306, "screening.min_band_gap_ev: min_band_gap_ev must be <= 100 eV"),
        ("screening", "max_e_form_ev_per_atom", -1e306, "(allowed: [-20, 20] eV/atom)"),
        ("composition", "shards", 10**9, "composition.shards: shards must be <= 10000"),
        ("composition", "batch_size", 0, "composition.batch_size: batch_size must be >= 1"),
        ("structures", "ltol", 1e300, "structures.ltol: ltol must be <= 1"),
        ("structures", "angle_tol", 1e300, "(allowed: (0, 30] degrees)"),
        ("structures", "max_structures", 10**12, "structures.max_structures"),
        ("conductivity", "min_p_superionic", -0.5, "(allowed: [0, 1])"),
        ("conductivity", "batch_size", 10**9, "conductivity.batch_size"),
        ("prototypes", "max_atoms", 0, "prototypes.max_atoms"),
        ("prototypes", "n_elements", [3, 1000], "prototypes.n_elements: n_elements[1] must be <= 10"),
    ],
)
def test_campaign_sections_are_bounded(tmp_path: Path, section: str, field: str, value, named: str) -> None:
    path = tmp_path / "c.yaml"
    if value in (".inf",):
        path.write_text(f"{section}:\n  {field}: {value}\n")
    else:
        _write(path, {section: {field: value}})
    with pytest.raises(InvalidInput) as err:
        load_campaign(path)
    assert named in str(err.value) and "(allowed: " in str(err.value) and len(str(err.value)) < 400


def test_campaign_temperature_count_is_the_protocols() -> None:
    from htvs.campaign.config import ValidationSection
    from htvs.validation.config import MAX_TEMPERATURES

    limit = [m.max_length for m in ValidationSection.model_fields["temperatures_k"].metadata if hasattr(m, "max_length")]
    assert limit == [MAX_TEMPERATURES]


def test_campaign_production_ps_reproducer_through_every_cli_command(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", {"validation": {"top_k": 1, "production_ps": 1e306}})
    runner = CliRunner()
    for args in (
        ["campaign", "run", str(path), "--out", str(tmp_path / "o")],
        ["campaign", "shards", "--config", str(path)],
        ["campaign", "stage", "screen", "--config", str(path), "--store", str(tmp_path / "store")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == EXIT_BAD_INPUT, (args, result.output)
        assert "validation.production_ps" in result.output and "Traceback" not in result.output


def test_the_shipped_configs_still_load() -> None:
    demo = load_campaign(ROOT / "configs" / "demo.yaml")
    paper = load_campaign(ROOT / "configs" / "paper.yaml")
    assert demo.name == "demo" and demo.validation.production_ps == 0.2
    assert paper.validation.temperatures_k == (600.0, 800.0, 1000.0, 1200.0)
    assert paper.validation.production_ps == 40.0 and paper.validation.timestep_fs == 2.0


CONFIG_TEXT = "name: enc\nscreening:\n  min_band_gap_ev: 0.5\n"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"name: caf\xe9\n", "is not UTF-8 text: byte 0xe9 at offset 9"),  # Latin-1
        (CONFIG_TEXT.encode("utf-16-le"), "contains NUL characters"),  # UTF-16 without a BOM
        (b"\xff\xfe" + b"\xff\xdb" + b"n\x00", "is not UTF-16 text"),  # a BOM, then a lone surrogate
        (b"name: a\x00b\n", "contains NUL characters"),
        (b"name: [" + b"[" * 10_000 + b"]" * 10_001 + b"\n", "nested more than 32 levels deep"),
        (b"[" * 10_000 + b"]" * 10_000, "nested more than 32 levels deep"),
        (b"{a: " * 10_000 + b"1" + b"}" * 10_000, "nested more than 32 levels deep"),
        (b"name: a\nname: b\n", "duplicate key 'name' (first at line 1) at line 2"),
        (b"screening:\n  min_band_gap_ev: 1\n  min_phi_ox_v: 2\n  min_band_gap_ev: 3\n",
         "duplicate key 'min_band_gap_ev' (first at line 2) at line 4"),
        (b"validation:\n  top_k: 1\nvalidation:\n  top_k: 2\n", "duplicate key 'validation' (first at line 1) at line 3"),
        (b"composition:\n  shards: " + b"1" * 5000 + b"\n", "is not a valid int"),  # was ValueError
        (b"name: 2001-13-45\n", "'2001-13-45' is not a valid timestamp"),  # was ValueError
        (b"name: !!int ''\n", "'' is not a valid int"),  # was IndexError inside PyYAML
        (b"!!map 2001-13-45\n", "is not valid YAML"),  # was ValueError
        (b"name: &a [*a]\n", "nested more than 32 levels deep"),  # a list that contains itself
        (b"name: [unclosed\n", "is not valid YAML"),
        (b"prototypes:\n  source: " + b"x" * 5000 + b"\n", "prototypes.source: String should have at most 4096"),
        (b"prototypes:\n  source: " + b"x" * 4000 + b"\n", "is neither a source name"),  # too long for a path
        (b"- 1\n- 2\n", "expected a mapping at the top level, got list"),
    ],
)
def test_config_files_are_read_safely(tmp_path: Path, raw: bytes, named: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    with pytest.raises(InvalidInput) as err:
        load_campaign(path)
    assert named in str(err.value) and len(str(err.value)) < 600
    for args in (["campaign", "run", str(path), "--out", str(tmp_path / "o")], ["campaign", "shards", "--config", str(path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == EXIT_BAD_INPUT and "Traceback" not in result.output, (args, result.output)


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines.append("name: *a9")
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput, match="unknown key"):  # a0..a9; nothing is expanded
        load_campaign(path)


@pytest.mark.parametrize("bom", [codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE])
def test_configs_with_a_byte_order_mark_are_read(tmp_path: Path, bom: bytes) -> None:
    encoding = {codecs.BOM_UTF8: "utf-8", codecs.BOM_UTF16_LE: "utf-16-le", codecs.BOM_UTF16_BE: "utf-16-be",
                codecs.BOM_UTF32_LE: "utf-32-le"}[bom]
    path = tmp_path / "c.yaml"
    path.write_bytes(bom + CONFIG_TEXT.encode(encoding))
    assert load_campaign(path).name == "enc"


def test_odd_config_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_campaign(tmp_path)  # a folder
    with pytest.raises(InvalidInput, match="does not exist"):
        load_campaign(tmp_path / ("x" * 5000))  # too long a name for the file system
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(InvalidInput, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        load_campaign(big)


def test_a_yaml_merge_key_is_not_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("defaults: &d {shards: 2, batch_size: 8}\ncomposition:\n  <<: *d\n  shards: 3\n")
    with pytest.raises(InvalidInput, match="unknown key 'defaults'"):  # merge accepted; the anchor key is not
        load_campaign(path)
    path.write_text("composition: {shards: 3}\n")
    assert load_campaign(path).composition.shards == 3


# --------------------------------------------------------------------------- JSON configs (StageService)


def test_deep_and_repeated_json_configs_are_refused() -> None:
    deep_objects = '{"a": ' * 600 + "1" + "}" * 600  # within json's own recursion limit
    assert nesting_depth(json.loads(deep_objects)) == 600
    for text, named in (
        (deep_objects, "nested more than 32 levels deep"),
        ('{"prototypes": {"ids": ' + "[" * 500 + "]" * 500 + "}}", "nested more than 32 levels deep"),
        ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
        ('{"name": "a", "name": "b"}', "duplicate key 'name'"),
        ('{"validation": {"production_ps": 1e306}}', "validation.production_ps: production_ps must be <= 100000 ps"),
    ):
        with pytest.raises(InvalidInput, match=r".*") as err:
            validate_campaign(parse_campaign_json(text))
        assert named in str(err.value) and len(str(err.value)) < 400
    with pytest.raises(InvalidInput, match="nested more than 32"):
        validate_campaign(parse_campaign(json.loads(deep_objects), "config_json"))


def test_stage_service_config_path_refuses_deep_json() -> None:
    from htvs.grpc.stage_service import StageServicer

    servicer = StageServicer("substitution", None, None)
    for text, named in (
        ('{"a": ' * 600 + "1" + "}" * 600, "nested more than 32 levels deep"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"validation": {"production_ps": 1e306}}', "validation.production_ps"),
    ):
        with pytest.raises(InvalidInput) as err:
            servicer._config(text)
        assert named in str(err.value)
