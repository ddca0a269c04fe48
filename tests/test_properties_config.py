"""Property-based tests (Hypothesis) of the campaign config loader and the validation settings.

* Any YAML document (random text, random bytes, or a mapping with the real section and field
  names holding random values: huge, tiny, NaN, infinite, negative numbers, strings, lists,
  nesting) makes :func:`load_campaign` return a config or raise InvalidInput, whose message names
  the offending key and is bounded in length; never another exception.
* Any value of any setting of the validation protocol (MD, relaxation, supercell, analysis)
  builds a config or raises InvalidInput naming the setting (and, for a number out of range,
  the allowed range).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from htvs.campaign.config import CampaignConfig, load_campaign, parse_campaign_json  # noqa: E402
from htvs.errors import InvalidInput  # noqa: E402
from htvs.validation import AnalysisConfig, MDConfig, RelaxConfig, SupercellConfig, ValidationConfig  # noqa: E402

#: Longest message accepted from a refused config, characters.
MAX_MESSAGE_CHARS = 1200

SECTIONS = {name: info.annotation for name, info in CampaignConfig.model_fields.items() if name != "name"}
FIELDS = {name: tuple(model.model_fields) for name, model in SECTIONS.items()}

SPECIAL_NUMBERS = [
    0, -0.0, 1, -1, 0.5, 2.0, 1e-300, 5e-324, 1e306, -1e306, 1.7976931348623157e308, 2**31, 2**63, 10**30,
    math.nan, math.inf, -math.inf,
]
numbers = st.one_of(
    st.sampled_from(SPECIAL_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**40), max_value=10**40),
)
scalars = st.one_of(
    numbers,
    st.none(),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["mlip", "vasp", "none", "max", "Li", "S", "one_required", "ionic_radii", "mp-2018", "demo"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12,
)


@st.composite
def sections(draw, name: str) -> dict:
    keys = st.one_of(st.sampled_from(FIELDS[name]), st.text(max_size=8))
    return draw(st.dictionaries(keys, values, max_size=6))


@st.composite
def documents(draw) -> dict:
    chosen = draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True, max_size=4))
    data: dict = {name: draw(st.one_of(sections(name), values)) for name in chosen}
    if draw(st.booleans()):
        data["name"] = draw(st.one_of(st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True), values))
    if draw(st.integers(0, 4)) == 0:
        data[draw(st.text(max_size=8))] = draw(values)
    if "validation" in data and isinstance(data["validation"], dict) and draw(st.booleans()):
        data["validation"]["top_k"] = 1  # the whole protocol is checked too
    return data


def _names_a_key(message: str, data: dict) -> bool:
    """Whether ``message`` names a key of ``data`` (a section, ``name``, or an unknown key)."""
    return "unknown key" in message or any(str(key)[:40] in message for key in data if str(key))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("configs")


@settings(max_examples=300)
@given(data=documents())
def test_random_mappings_load_or_are_refused_naming_a_key(folder: Path, data: dict) -> None:
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    try:
        config = load_campaign(path)
    except InvalidInput as exc:
        message = str(exc)
        assert len(message) < MAX_MESSAGE_CHARS, message
        assert _names_a_key(message, data), message
    else:
        assert isinstance(config, CampaignConfig)
        for value in config.validation.temperatures_k:
            assert 0 < value <= 5000


@settings(max_examples=150)
@given(data=documents())
def test_random_mappings_as_json_behave_alike(data: dict) -> None:
    import json

    try:
        text = json.dumps(data)
    except (TypeError, ValueError):
        return
    try:
        parse_campaign_json(text)
    except InvalidInput as exc:
        assert len(str(exc)) < MAX_MESSAGE_CHARS and _names_a_key(str(exc), data), str(exc)


YAML_PIECES = [
    "name: ", "validation:\n", "  production_ps: ", "  timestep_fs: ", "  temperatures_k: ", "screening:\n",
    "  min_band_gap_ev: ", "composition:\n", "  shards: ", "structures:\n", "  ltol: ", "\n", " ", "  ", "- ", "[", "]",
    "{", "}", ": ", ", ", "&a ", "*a", "<<: ", "!!binary ", "!!int ", "!!float ", "!!timestamp ", "!!str ", "!!map ",
    "!!python/object:os.system ", "2001-13-45", "1e999", "1" * 5000, ".nan", ".inf", "-.inf", "0x1F", "0o17", "1_000",
    "'", '"', "#", "---\n", "...\n", "%YAML 1.1\n", "? ", "|\n", ">\n", "\t", "null", "~", "yes", "\ufeff", "é",
    "1e306", "1e-300", "-5",
]


@settings(max_examples=400)
@given(
    text=st.one_of(
        st.lists(st.sampled_from(YAML_PIECES), max_size=30).map("".join),
        st.text(max_size=200),
    ),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-16-le", "latin-1"]),
)
def test_random_yaml_text_loads_or_is_refused(folder: Path, text: str, encoding: str) -> None:
    path = folder / "t.yaml"
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        return
    try:
        load_campaign(path)
    except InvalidInput as exc:
        assert 0 < len(str(exc)) < MAX_MESSAGE_CHARS


@settings(max_examples=200)
@given(raw=st.binary(max_size=300))
def test_random_bytes_load_or_are_refused(folder: Path, raw: bytes) -> None:
    path = folder / "b.yaml"
    path.write_bytes(raw)
    try:
        load_campaign(path)
    except InvalidInput as exc:
        assert 0 < len(str(exc)) < MAX_MESSAGE_CHARS


# --------------------------------------------------------------------------- validation settings

#: Each setting: its class, and the words a message about it contains.
SETTINGS = {
    "md.temperatures_k": (MDConfig, "temperatures_k", ("temperature",)),
    "md.timestep_fs": (MDConfig, "timestep_fs", ("timestep", " fs")),
    "md.heat_ps": (MDConfig, "heat_ps", ("heat",)),
    "md.equilibrate_ps": (MDConfig, "equilibrate_ps", ("equilibrate",)),
    "md.production_ps": (MDConfig, "production_ps", ("production",)),
    "md.start_temperature_k": (MDConfig, "start_temperature_k", ("start temperature",)),
    "md.thermostat_damping_fs": (MDConfig, "thermostat_damping_fs", ("thermostat damping",)),
    "md.thermostat_chain": (MDConfig, "thermostat_chain", ("thermostat chain",)),
    "md.rescale_every_steps": (MDConfig, "rescale_every_steps", ("rescale interval",)),
    "md.record_every_steps": (MDConfig, "record_every_steps", ("record interval", "recorded frames")),
    "md.checkpoint_every_steps": (MDConfig, "checkpoint_every_steps", ("checkpoint interval",)),
    "md.seed": (MDConfig, "seed", ("seed",)),
    "relax.fmax_ev_per_angstrom": (RelaxConfig, "fmax_ev_per_angstrom", ("fmax",)),
    "relax.max_steps": (RelaxConfig, "max_steps", ("max relax steps",)),
    "supercell.min_length_angstrom": (SupercellConfig, "min_length_angstrom", ("min supercell length",)),
    "supercell.min_atoms": (SupercellConfig, "min_atoms", ("min atoms",)),
    "supercell.max_atoms": (SupercellConfig, "max_atoms", ("max atoms",)),
    "analysis.window_fractions": (AnalysisConfig, "window_fractions", ("window fraction",)),
    "analysis.min_obs": (AnalysisConfig, "min_obs", ("min_obs",)),
    "analysis.avg_nsteps": (AnalysisConfig, "avg_nsteps", ("avg_nsteps",)),
    "analysis.target_temperature_k": (AnalysisConfig, "target_temperature_k", ("target temperature",)),
    "analysis.n_bootstrap": (AnalysisConfig, "n_bootstrap", ("bootstrap draws",)),
    "analysis.seed": (AnalysisConfig, "seed", ("seed",)),
}
setting_values = st.one_of(
    numbers,
    st.lists(numbers, max_size=5),
    st.sampled_from([None, True, "600", "x", [], (0.5, 1.0), (600.0, 900.0)]),
)


@settings(max_examples=500)
@given(key=st.sampled_from(sorted(SETTINGS)), value=setting_values)
def test_one_random_setting_builds_or_is_named(key: str, value) -> None:
    cls, field, words = SETTINGS[key]
    try:
        config = cls(**{field: value})
    except InvalidInput as exc:
        message = str(exc)
        assert len(message) < 400, message
        assert any(word in message for word in words), (key, message)
        if "must be <=" in message or "must be >" in message or "must be a finite number" in message:
            assert "(allowed: " in message, message
    else:
        if cls is MDConfig:
            assert len(config.temperatures_k) * config.total_steps <= 100_000_000


@settings(max_examples=200)
@given(chosen=st.dictionaries(st.sampled_from(sorted(SETTINGS)), setting_values, max_size=6))
def test_random_protocols_build_or_are_refused(chosen: dict) -> None:
    parts: dict[type, dict] = {MDConfig: {}, RelaxConfig: {}, SupercellConfig: {}, AnalysisConfig: {}}
    for key, value in chosen.items():
        cls, field, _ = SETTINGS[key]
        parts[cls][field] = value
    try:
        config = ValidationConfig(
            md=MDConfig(**parts[MDConfig]), relax=RelaxConfig(**parts[RelaxConfig]),
            supercell=SupercellConfig(**parts[SupercellConfig]), analysis=AnalysisConfig(**parts[AnalysisConfig]),
        )
    except InvalidInput as exc:
        assert 0 < len(str(exc)) < 400
    else:
        assert 0.1 <= config.md.timestep_fs <= 10 and 0 < config.md.production_ps <= 100_000
