"""The campaign configuration file (YAML), validated before any work starts.

Unknown keys, bad thresholds, numbers outside their allowed range, missing files and impossible
element pools are refused with a message naming the offending key, its value and (for a
number) the allowed range. The file must be UTF-8 text (UTF-16 or UTF-32 with a byte-order mark
are read too) of at most ``MAX_CONFIG_BYTES``, nested at most ``MAX_CONFIG_DEPTH`` deep, and
may not repeat a key in one mapping.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, field_validator

from htvs.errors import InvalidInput
from htvs.errors import shown
from htvs.ranges import Range
from htvs.screening_config import PAPER_THRESHOLDS, SETTING_RANGES, THRESHOLD_RANGES, check_rule

#: Largest campaign config read, bytes (a campaign config is a few KB).
MAX_CONFIG_BYTES = 1 << 20
#: Deepest nesting of mappings and lists in a campaign config (the real ones nest 3 deep).
MAX_CONFIG_DEPTH = 32
#: Longest string value in a campaign config, characters (paths included).
MAX_STRING_CHARS = 4096
#: Longest path text shown whole in a message, characters (longer: its two ends).
MAX_PATH_SHOWN_CHARS = 160

#: An element symbol ("Li", "S").
_Element = Annotated[str, StringConstraints(max_length=3)]


class _Section(BaseModel):
    """A config section: unknown keys refused, strings bounded, and each field named in
    :meth:`ranges` checked against its :class:`~htvs.ranges.Range` (every item of a list)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=MAX_STRING_CHARS)

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        """The allowed range of each numeric field, by field name."""
        return {}

    @field_validator("*")
    @classmethod
    def _within_range(cls, value: Any, info: ValidationInfo) -> Any:
        allowed = cls.ranges().get(info.field_name or "")
        if allowed is None or value is None:
            return value
        if isinstance(value, tuple):
            return tuple(allowed.check(f"{info.field_name}[{i}]", item) for i, item in enumerate(value))
        return allowed.check(str(info.field_name), value)


class PrototypesSection(_Section):
    """Where prototypes come from: a source name (``mp-2018``, ``obelix``, ``mp`` with
    MP_API_KEY) or a folder path; ``ids`` keeps only the listed prototype ids (null: all)."""

    source: str = "mp-2018"
    max_atoms: int = 200
    n_elements: tuple[int, ...] = Field((3, 4), min_length=1, max_length=10)
    ids: tuple[str, ...] | None = Field(None, max_length=1_000_000)

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        return {"max_atoms": Range(1, 10_000, integer=True), "n_elements": Range(1, 10, integer=True)}

    @field_validator("ids")
    @classmethod
    def _some_ids(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("ids must list at least one prototype id, or be null for all")
        return value


class SubstitutionSection(_Section):
    """Stage 1 settings (see ``htvs.substitution.SubstitutionConfig``); null pool = the paper's 28."""

    element_pool: tuple[_Element, ...] | None = Field(None, max_length=118)
    kept_element: _Element = "Li"
    required_element: _Element | None = "S"
    rule: str = "one_required"


class CompositionSection(_Section):
    """Stage 2 settings: model folders (null = shipped), shards for fan-out, batch size."""

    e_form_models: Path | None = None
    band_gap_models: Path | None = None
    shards: int = 4
    batch_size: int = 4096

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        return {"shards": Range(1, 10_000, integer=True), "batch_size": Range(1, 1_000_000, integer=True)}


class ScreeningSection(_Section):
    """Stage 3 thresholds and rule (the paper's defaults, from :mod:`htvs.screening_config`):
    ``rule`` is ``deterministic`` (thresholds on the ensemble mean) or ``probabilistic`` (the
    probability that they hold at least ``min_probability``, in (0, 1]). ``charge_balance``
    (on by default, the recommended screen; false reproduces the paper) keeps only formulas
    whose elements can take known oxidation states summing to zero (:mod:`htvs.charge_balance`),
    before the other filters; the funnel counts them as ``charge_balanced``."""

    max_e_form_ev_per_atom: float = PAPER_THRESHOLDS.max_e_form_ev_per_atom
    max_e_above_hull_ev_per_atom: float = PAPER_THRESHOLDS.max_e_above_hull_ev_per_atom
    min_band_gap_ev: float = PAPER_THRESHOLDS.min_band_gap_ev
    min_phi_ox_v: float = PAPER_THRESHOLDS.min_phi_ox_v
    rule: str = PAPER_THRESHOLDS.rule
    min_probability: float = PAPER_THRESHOLDS.min_probability
    charge_balance: bool = True

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        return SETTING_RANGES

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        try:
            return check_rule(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None


class StructuresSection(_Section):
    """Stage 4: materialize survivors' structures and deduplicate them (StructureMatcher)."""

    rescale_volume: str = "ionic_radii"  # or "none" (the paper's fixed lattice)
    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0
    max_structures: int = 200_000

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        from htvs.structures.dedupe import DEDUPE_RANGES

        return {name: DEDUPE_RANGES[name] for name in ("ltol", "stol", "angle_tol")} | {
            "max_structures": Range(0, 100_000_000, integer=True)
        }


class GenerationSection(_Section):
    """Stage 5: generated structures for the best ``max_formulas`` screened formulas (in the
    screen's ranking), ``n_samples`` each, sampled by the generator (``models``; null = the
    shipped one in src/htvs/models/generator) with ``seed`` and ``step_lr``, ``batch_crystals``
    crystals per denoising loop on ``threads`` torch threads; one formula unit per cell (the
    screened formula), at most ``max_atoms`` atoms. Samples failing the physical sanity filter
    (:mod:`htvs.generation.sanity`: shortest distance, periodic images included, under
    ``max(min_distance_fraction * (r_a + r_b), min_distance_angstrom)`` with bond radii r in Å,
    or volume per atom outside ``[min_volume_per_atom_a3, max_volume_per_atom_a3]`` Å^3/atom) are
    rejected with their reason. Off by default: the paper ran DiffCSP on a GPU for its shortlisted
    formulas, and on a CPU a sample costs about 10 s per 18-atom cell (the generator service on a
    GPU node is the way to run it at scale); off, the stage writes empty tables."""

    enabled: bool = False
    models: Path | None = None
    max_formulas: int = 100
    n_samples: int = 4
    seed: int = 0
    step_lr: float = 1e-5
    max_atoms: int = 20
    batch_crystals: int = 256
    threads: int = 1
    min_distance_fraction: float = 0.5
    min_distance_angstrom: float = 0.5
    min_volume_per_atom_a3: float = 5.0
    max_volume_per_atom_a3: float = 100.0

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        from htvs.generation.sanity import SANITY_RANGES

        return SANITY_RANGES | {
            "max_formulas": Range(0, 1_000_000, integer=True),
            "n_samples": Range(1, 100, integer=True),
            "seed": Range(0, 2**32 - 1, integer=True),
            "step_lr": Range(0.0, 1.0),
            "max_atoms": Range(1, 1000, integer=True),
            "batch_crystals": Range(1, 100_000, integer=True),
            "threads": Range(1, 256, integer=True),
        }


class ConductivitySection(_Section):
    """Stage 6: the conductivity GNN ensemble on the unique structures.

    ``min_p_superionic`` is the shortlist threshold on P(sigma(300 K) >= 1e-4 S/cm), the model's
    calibrated probability (its card's ``calibration``: the map chosen by nested element-set-grouped
    CV on the OBELiX train split; on data from other chemistries it can be off, see the card).
    """

    models: Path | None = None  # null = the shipped ensemble in src/htvs/models/conductivity
    min_p_superionic: float = 0.5
    max_atoms: int = 500
    batch_size: int = 32

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        return {
            "min_p_superionic": Range(0.0, 1.0),
            "max_atoms": Range(1, 100_000, integer=True),
            "batch_size": Range(1, 10_000, integer=True),
        }


class RelaxSection(_Section):
    """Between stages 4 and 6: CHGNet relaxation (cell + positions, batched FIRE; no MD) of every
    unique structure, E_f and E_hull against the CHGNet energies of the competing MP phases (one
    energy scale, :mod:`htvs.relax`), keeping structures with E_hull <= ``max_e_above_hull_ev_per_atom``
    (eV/atom) and handing the relaxed ones to stage 6. Off (the paper's protocol): stage 4's
    structures pass through unchanged. ``max_structures`` relaxes the N unique structures with
    the fewest sites only (the others are passed on unrelaxed and recorded as such); ``max_atoms`` caps a cell (sites);
    ``cache_dir`` holds the reference energies (null: ``~/.cache/htvs/chgnet-hull``)."""

    enabled: bool = False
    fmax_ev_per_angstrom: float = 0.05
    max_steps: int = 300
    batch_size: int = 8
    max_e_above_hull_ev_per_atom: float = 0.1
    max_atoms: int = 200
    max_structures: int = 100_000
    threads: int = 1
    cache_dir: Path | None = None

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        return {
            "fmax_ev_per_angstrom": Range(1e-3, 10.0, unit="eV/Å"),
            "max_steps": Range(0, 100_000, integer=True),
            "batch_size": Range(1, 1_000, integer=True),
            "max_e_above_hull_ev_per_atom": Range(0.0, 10.0, unit="eV/atom"),
            "max_atoms": Range(1, 2_000, integer=True),
            "max_structures": Range(0, 100_000_000, integer=True),
            "threads": Range(1, 256, integer=True),
        }


class ValidationSection(_Section):
    """Stage 7: physics validation of the ``top_k`` most probable superionic structures of the
    stage-6 shortlist (0 skips the stage). Lengths default to the paper's protocol; MD
    checkpoints go to ``workdir`` (null: ``<system temp>/htvs-validation``), so a killed campaign
    resumes its MD runs. Each number is bounded here (the ranges of
    :mod:`htvs.validation.config`); when ``top_k`` > 0 the whole protocol is checked too (two or
    more temperatures, total MD steps, production windows)."""

    top_k: int = 0
    backend: str = "mlip"
    temperatures_k: tuple[float, ...] = Field((600.0, 800.0, 1000.0, 1200.0), max_length=32)  # MAX_TEMPERATURES
    heat_ps: float = 2.0
    equilibrate_ps: float = 5.0
    production_ps: float = 40.0
    timestep_fs: float = 2.0
    min_supercell_length_angstrom: float = 8.0
    max_atoms: int = 200
    fmax_ev_per_angstrom: float = 0.05
    relax_max_steps: int = 500
    smoothing: str = "max"
    max_e_above_hull_ev_per_atom: float = 0.1
    threads: int = 1
    workdir: Path | None = None

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        from htvs.validation import config as v

        return {
            "top_k": Range(0, 10_000, integer=True),
            "temperatures_k": v.TEMPERATURE_K,
            "heat_ps": v.PHASE_PS,
            "equilibrate_ps": v.PHASE_PS,
            "production_ps": v.PRODUCTION_PS,
            "timestep_fs": v.TIMESTEP_FS,
            "min_supercell_length_angstrom": v.SUPERCELL_LENGTH_ANGSTROM,
            "max_atoms": v.MAX_ATOMS,
            "fmax_ev_per_angstrom": v.FMAX_EV_PER_ANGSTROM,
            "relax_max_steps": v.RELAX_STEPS,
            "max_e_above_hull_ev_per_atom": THRESHOLD_RANGES["max_e_above_hull_ev_per_atom"],
            "threads": Range(1, 256, integer=True),
        }


class CampaignConfig(_Section):
    """One screening campaign."""

    name: str = "campaign"
    prototypes: PrototypesSection = PrototypesSection()
    substitution: SubstitutionSection = SubstitutionSection()
    composition: CompositionSection = CompositionSection()
    screening: ScreeningSection = ScreeningSection()
    generation: GenerationSection = GenerationSection()
    structures: StructuresSection = StructuresSection()
    relax: RelaxSection = RelaxSection()
    conductivity: ConductivitySection = ConductivitySection()
    validation: ValidationSection = ValidationSection()

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
            raise ValueError(f"name must be a lowercase slug (a-z, 0-9, '-'; at most 63), got {shown(value)}")
        return value


#: Problems of one config reported at most (the rest are counted).
_MAX_PROBLEMS = 5


def _describe(error: ValidationError) -> str:
    """pydantic's errors as one line: each names its key and value (bounded in length)."""
    problems = error.errors()
    parts = []
    for item in problems[:_MAX_PROBLEMS]:
        where = ".".join(
            str(p) if isinstance(p, int) or (isinstance(p, str) and len(p) <= 64) else shown(p) for p in item["loc"]
        ) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        elif item["type"] == "value_error":  # raised here: the message names the value and range
            parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
        else:
            parts.append(f"{where}: {item['msg']} (got {shown(item.get('input'))})")
    if len(problems) > _MAX_PROBLEMS:
        parts.append(f"and {len(problems) - _MAX_PROBLEMS} more problems")
    return "; ".join(parts)


def _path_text(path: str | Path) -> str:
    """A path for a message: whole up to ``MAX_PATH_SHOWN_CHARS``, else its two ends."""
    text = str(path)
    if len(text) <= MAX_PATH_SHOWN_CHARS:
        return text
    half = MAX_PATH_SHOWN_CHARS // 2
    return f"{text[:half]}...{text[-half:]}"


def _exists(path: Path, kind: str) -> bool:
    """Whether ``path`` is a file (``kind`` "file") or a folder ("dir"); False for a path the
    system cannot look up (too long, a NUL byte)."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except (OSError, ValueError):
        return False


def validate_campaign(config: CampaignConfig, base_dir: Path | None = None) -> CampaignConfig:
    """Deeper checks that need the stage configs: pool, rule, thresholds, model folders."""
    from htvs.screening_config import CompositionScreenConfig

    substitution_config(config)
    CompositionScreenConfig(**config.screening.model_dump())
    if config.structures.rescale_volume not in ("ionic_radii", "none"):
        raise InvalidInput(
            f"structures.rescale_volume must be 'ionic_radii' or 'none', got {shown(config.structures.rescale_volume)}"
        )
    base = base_dir or Path.cwd()
    for key in ("e_form_models", "band_gap_models"):
        folder = getattr(config.composition, key)
        if folder is not None:
            path = folder if folder.is_absolute() else base / folder
            if not _exists(path / "model_card.json", "file"):
                raise InvalidInput(f"composition.{key}: no model_card.json in {_path_text(path)}")
    if config.validation.top_k > 0:
        validation_config(config)
    sanity_config(config)
    for section, folder in (("conductivity", config.conductivity.models), ("generation", config.generation.models)):
        if folder is not None:
            path = folder if folder.is_absolute() else base / folder
            if not _exists(path / "model_card.json", "file"):
                raise InvalidInput(f"{section}.models: no model_card.json in {_path_text(path)}")
    source = config.prototypes.source
    if not is_source_name(source):
        path = Path(source) if Path(source).is_absolute() else base / source
        if not _exists(path, "dir"):
            from htvs.prototypes import SOURCE_NAMES

            names = ", ".join(repr(n) for n in SOURCE_NAMES)
            raise InvalidInput(
                f"prototypes.source: {_path_text(source)!r} is neither a source name ({names}) nor a folder "
                f"({_path_text(path)} does not exist)"
            )
    return config


def is_source_name(source: str) -> bool:
    """Whether ``source`` names a prototype source rather than a folder."""
    from htvs.prototypes import SOURCE_NAMES

    return source in SOURCE_NAMES


def validation_config(config: CampaignConfig):
    """The stage-7 ``ValidationConfig`` of a campaign (InvalidInput names a bad setting)."""
    from htvs.validation import AnalysisConfig, MDConfig, RelaxConfig, SupercellConfig, ValidationConfig

    v = config.validation
    try:
        return ValidationConfig(
            backend=v.backend,
            relax=RelaxConfig(fmax_ev_per_angstrom=v.fmax_ev_per_angstrom, max_steps=v.relax_max_steps),
            supercell=SupercellConfig(min_length_angstrom=v.min_supercell_length_angstrom, max_atoms=v.max_atoms),
            md=MDConfig(temperatures_k=v.temperatures_k, timestep_fs=v.timestep_fs, heat_ps=v.heat_ps,
                        equilibrate_ps=v.equilibrate_ps, production_ps=v.production_ps),
            analysis=AnalysisConfig(smoothing=v.smoothing),
        )
    except InvalidInput as exc:
        raise InvalidInput(f"validation: {exc}") from None


def sanity_config(config: CampaignConfig):
    """The stage-5 :class:`~htvs.generation.sanity.SanityConfig` of a campaign (InvalidInput
    names a bad threshold, e.g. a minimum volume per atom not below the maximum)."""
    from htvs.generation.sanity import SanityConfig, check_volume_bounds

    g = config.generation
    check_volume_bounds(g.min_volume_per_atom_a3, g.max_volume_per_atom_a3, prefix="generation.")
    return SanityConfig(min_distance_fraction=g.min_distance_fraction, min_distance_angstrom=g.min_distance_angstrom,
                        min_volume_per_atom_a3=g.min_volume_per_atom_a3,
                        max_volume_per_atom_a3=g.max_volume_per_atom_a3)


def substitution_config(config: CampaignConfig):
    """The ``SubstitutionConfig`` of a campaign (raises InvalidInput on a bad pool or rule)."""
    from htvs.substitution import SubstitutionConfig, SubstitutionRule

    section = config.substitution
    try:
        rule = SubstitutionRule(section.rule)
    except ValueError:
        raise InvalidInput(
            f"substitution.rule: unknown rule {shown(section.rule)}; choose from {[r.value for r in SubstitutionRule]}"
        ) from None
    kwargs: dict[str, Any] = {
        "kept_element": section.kept_element,
        "required_element": section.required_element,
        "rule": rule,
    }
    if section.element_pool is not None:
        kwargs["element_pool"] = section.element_pool
    try:
        return SubstitutionConfig(**kwargs)
    except InvalidInput as exc:
        raise InvalidInput(f"substitution: {exc}") from None


def nesting_depth(data: Any) -> int:
    """Levels of nested mappings and lists in ``data`` (a scalar: 0), without recursion.

    A container shared by several parents (a YAML alias) is measured once; one that contains
    itself counts as deeper than ``MAX_CONFIG_DEPTH``.
    """
    heights: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, children_done = stack.pop()
        if not isinstance(node, dict | list | tuple) or (not children_done and id(node) in heights):
            continue
        children = [c for c in (node.values() if isinstance(node, dict) else node) if isinstance(c, dict | list | tuple)]
        if children_done:
            open_ids.discard(id(node))
            heights[id(node)] = 1 + max((heights[id(c)] for c in children), default=0)
            continue
        if id(node) in open_ids:  # a cycle
            return MAX_CONFIG_DEPTH + 1
        open_ids.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_ids:
                return MAX_CONFIG_DEPTH + 1
            stack.append((child, False))
    return heights.get(id(data), 0)


def parse_campaign(data: Any, source: str = "campaign config") -> CampaignConfig:
    """Validate a loaded YAML (or JSON) document.

    Raises:
        InvalidInput: not a mapping, nested deeper than ``MAX_CONFIG_DEPTH``, an unknown key, or
            a value of the wrong type or out of its range; the message names the key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    depth = nesting_depth(data)
    if depth > MAX_CONFIG_DEPTH:
        raise InvalidInput(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep (a campaign config nests 3)")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{source}: {_describe(exc)}") from None


def parse_campaign_json(text: str, source: str = "config_json") -> CampaignConfig:
    """A campaign config sent as JSON text (as StageService receives it), parsed like a file:
    at most ``MAX_CONFIG_BYTES``, no repeated key in one object, nested at most
    ``MAX_CONFIG_DEPTH`` deep. Run :func:`validate_campaign` on the result for the deeper checks.

    Raises:
        InvalidInput: empty, oversized or invalid JSON, a repeated key, or an invalid setting;
            the message names ``source`` and the key.
    """
    import json

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise InvalidInput(f"{source} is {size} bytes; at most {MAX_CONFIG_BYTES}")
    if not text.strip():
        raise InvalidInput(f"{source} is empty; send the campaign configuration as JSON")

    def refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for key, value in pairs:
            if key in mapping:
                raise InvalidInput(f"{source}: duplicate key {shown(key)} in one object")
            mapping[key] = value
        return mapping

    try:
        data = json.loads(text, object_pairs_hook=refuse_repeats)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(f"{source} is not valid JSON: {str(exc)[:200]}") from None
    return parse_campaign(data, source)


def _config_loader():
    """A PyYAML safe loader that refuses a repeated key in one mapping (naming the key and both
    lines) and nesting deeper than ``MAX_CONFIG_DEPTH`` (before the recursive composer would
    exhaust the stack)."""
    import yaml
    from yaml.composer import ComposerError
    from yaml.constructor import ConstructorError

    class ConfigLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self._depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self._depth += 1
            try:
                if self._depth > MAX_CONFIG_DEPTH:
                    raise ComposerError(
                        None, None, f"nested more than {MAX_CONFIG_DEPTH} levels deep", self.peek_event().start_mark
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except yaml.YAMLError:
                raise
            except Exception as exc:  # PyYAML's own on odd scalars: 2001-13-45, 5000 digits, "!!int ''"
                kind = str(node.tag).rsplit(":", 1)[-1]
                raise ConstructorError(
                    None, None, f"{shown(node.value)} is not a valid {kind}: {str(exc)[:100]}", node.start_mark
                ) from None

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if not isinstance(node, yaml.MappingNode):  # "!!map 1": the base class refuses it
                return super().construct_mapping(node, deep)
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first_line.get(key)
                except TypeError:  # an unhashable key: the base class refuses it
                    continue
                if seen is not None:
                    raise ConstructorError(
                        None, None, f"duplicate key {shown(key)} (first at line {seen})", key_node.start_mark
                    )
                first_line[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    return ConfigLoader


def _yaml_problem(exc: Exception) -> str:
    """The problem and its line/column of a PyYAML error, without the quoted source line."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = str(problem)
    if len(problem) > 200:
        problem = problem[:200] + "..."
    return f"{problem}{where}"


def _config_text(path: Path) -> str:
    """The text of a config file: at most ``MAX_CONFIG_BYTES``, UTF-8 (UTF-16 and UTF-32 only
    with a byte-order mark); InvalidInput naming the file otherwise."""
    label = _path_text(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"campaign config {label} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"campaign config {label} is larger than {MAX_CONFIG_BYTES} bytes")
    encoding = "utf-8"
    for bom, name in (
        (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
    ):  # fmt: skip
        if raw.startswith(bom):
            encoding = name
            break
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"campaign config {label} is not {encoding.upper()} text: byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} ({exc.reason}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise InvalidInput(
            f"campaign config {label} contains NUL characters (UTF-16 or UTF-32 without a byte-order mark?); "
            "save it as UTF-8"
        )
    return text


def load_campaign(path: str | Path) -> CampaignConfig:
    """Read and fully validate a campaign YAML file (paths relative to the file's folder).

    Raises:
        InvalidInput: a missing, unreadable, oversized or non-UTF-8 file, invalid YAML, a repeated
            key, nesting deeper than ``MAX_CONFIG_DEPTH``, or an invalid setting; the message
            names the file and the key (and line, for YAML problems).
    """
    import yaml

    path = Path(path)
    label = _path_text(path)
    if not _exists(path, "file"):
        raise InvalidInput(f"campaign config {label} does not exist")
    text = _config_text(path)
    try:
        data = yaml.load(text, Loader=_config_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"campaign config {label} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise InvalidInput(f"campaign config {label} is nested too deeply") from None
    except Exception as exc:  # PyYAML's own failure on hostile input the checks above do not foresee
        raise InvalidInput(f"campaign config {label} cannot be read as YAML ({type(exc).__name__})") from None
    base = path.parent.resolve()
    config = validate_campaign(parse_campaign(data, label), base_dir=base)
    return resolve_paths(config, base)


def resolve_paths(config: CampaignConfig, base: Path) -> CampaignConfig:
    """Make the model folders (composition, conductivity, generation), a folder prototype source
    and the relax stage's reference-energy cache absolute (relative to ``base``)."""
    composition = config.composition.model_copy(
        update={
            key: (base / value if value is not None and not value.is_absolute() else value)
            for key, value in (
                ("e_form_models", config.composition.e_form_models),
                ("band_gap_models", config.composition.band_gap_models),
            )
        }
    )
    source = config.prototypes.source
    if not is_source_name(source) and not Path(source).is_absolute():
        source = str(base / source)
    prototypes = config.prototypes.model_copy(update={"source": source})
    def absolute(section):
        models = section.models
        return section.model_copy(
            update={"models": base / models if models is not None and not models.is_absolute() else models}
        )

    cache = config.relax.cache_dir
    relax = config.relax.model_copy(
        update={"cache_dir": base / cache if cache is not None and not cache.expanduser().is_absolute() else cache})
    return config.model_copy(update={"composition": composition, "prototypes": prototypes, "relax": relax,
                                     "conductivity": absolute(config.conductivity),
                                     "generation": absolute(config.generation)})
