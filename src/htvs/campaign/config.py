"""The campaign configuration file (YAML), validated before any work starts.

Unknown keys, bad thresholds, missing files and impossible element pools are refused with a
message naming the offending key and value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from htvs.errors import InvalidInput
from htvs.screening_config import PAPER_THRESHOLDS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrototypesSection(_Section):
    """Where prototypes come from: a source name (``mp-2018``, ``obelix``, ``mp`` with
    MP_API_KEY) or a folder path; ``ids`` keeps only the listed prototype ids (null: all)."""

    source: str = "mp-2018"
    max_atoms: int = Field(200, ge=1, le=10_000)
    n_elements: tuple[int, ...] = (3, 4)
    ids: tuple[str, ...] | None = None

    @field_validator("ids")
    @classmethod
    def _some_ids(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("ids must list at least one prototype id, or be null for all")
        return value


class SubstitutionSection(_Section):
    """Stage 1 settings (see ``htvs.substitution.SubstitutionConfig``); null pool = the paper's 28."""

    element_pool: tuple[str, ...] | None = None
    kept_element: str = "Li"
    required_element: str | None = "S"
    rule: str = "one_required"


class CompositionSection(_Section):
    """Stage 2 settings: model folders (null = shipped), shards for fan-out, batch size."""

    e_form_models: Path | None = None
    band_gap_models: Path | None = None
    shards: int = Field(4, ge=1, le=10_000)
    batch_size: int = Field(4096, ge=1, le=1_000_000)


class ScreeningSection(_Section):
    """Stage 3 thresholds (the paper's defaults, from :mod:`htvs.screening_config`)."""

    max_e_form_ev_per_atom: float = PAPER_THRESHOLDS.max_e_form_ev_per_atom
    max_e_above_hull_ev_per_atom: float = PAPER_THRESHOLDS.max_e_above_hull_ev_per_atom
    min_band_gap_ev: float = PAPER_THRESHOLDS.min_band_gap_ev
    min_phi_ox_v: float = PAPER_THRESHOLDS.min_phi_ox_v


class StructuresSection(_Section):
    """Stage 4: materialize survivors' structures and deduplicate them (StructureMatcher)."""

    rescale_volume: str = "ionic_radii"  # or "none" (the paper's fixed lattice)
    ltol: float = Field(0.2, gt=0)
    stol: float = Field(0.3, gt=0)
    angle_tol: float = Field(5.0, gt=0)
    max_structures: int = Field(200_000, ge=0)


class ConductivitySection(_Section):
    """Stage 6: the conductivity GNN ensemble on the unique structures.

    ``min_p_superionic`` is the shortlist threshold on P(sigma(300 K) >= 1e-4 S/cm).
    """

    models: Path | None = None  # null = the shipped ensemble in src/htvs/models/conductivity
    min_p_superionic: float = Field(0.5, ge=0.0, le=1.0)
    max_atoms: int = Field(500, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=10_000)


class ValidationSection(_Section):
    """Stage 7: physics validation of the ``top_k`` most probable superionic structures of the
    stage-6 shortlist (0 skips the stage). Lengths default to the paper's protocol; MD
    checkpoints go to ``workdir`` (null: ``<system temp>/htvs-validation``), so a killed campaign
    resumes its MD runs."""

    top_k: int = Field(0, ge=0, le=10_000)
    backend: str = "mlip"
    temperatures_k: tuple[float, ...] = (600.0, 800.0, 1000.0, 1200.0)
    heat_ps: float = 2.0
    equilibrate_ps: float = 5.0
    production_ps: float = 40.0
    timestep_fs: float = 2.0
    min_supercell_length_angstrom: float = 8.0
    max_atoms: int = Field(200, ge=1)
    fmax_ev_per_angstrom: float = Field(0.05, gt=0)
    relax_max_steps: int = Field(500, ge=0)
    smoothing: str = "max"
    max_e_above_hull_ev_per_atom: float = 0.1
    threads: int = Field(1, ge=1, le=256)
    workdir: Path | None = None


class CampaignConfig(_Section):
    """One screening campaign."""

    name: str = "campaign"
    prototypes: PrototypesSection = PrototypesSection()
    substitution: SubstitutionSection = SubstitutionSection()
    composition: CompositionSection = CompositionSection()
    screening: ScreeningSection = ScreeningSection()
    structures: StructuresSection = StructuresSection()
    conductivity: ConductivitySection = ConductivitySection()
    validation: ValidationSection = ValidationSection()

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
            raise ValueError(f"name must be a lowercase slug (a-z, 0-9, '-'), got {value!r}")
        return value


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        else:
            parts.append(f"{where}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(parts)


def validate_campaign(config: CampaignConfig, base_dir: Path | None = None) -> CampaignConfig:
    """Deeper checks that need the stage configs: pool, rule, thresholds, model folders."""
    from htvs.screening_config import CompositionScreenConfig

    substitution_config(config)
    CompositionScreenConfig(**config.screening.model_dump())
    if config.structures.rescale_volume not in ("ionic_radii", "none"):
        raise InvalidInput(
            f"structures.rescale_volume must be 'ionic_radii' or 'none', got {config.structures.rescale_volume!r}"
        )
    base = base_dir or Path.cwd()
    for key in ("e_form_models", "band_gap_models"):
        folder = getattr(config.composition, key)
        if folder is not None:
            path = folder if folder.is_absolute() else base / folder
            if not (path / "model_card.json").is_file():
                raise InvalidInput(f"composition.{key}: no model_card.json in {path}")
    if config.validation.top_k > 0:
        validation_config(config)
    folder = config.conductivity.models
    if folder is not None:
        path = folder if folder.is_absolute() else base / folder
        if not (path / "model_card.json").is_file():
            raise InvalidInput(f"conductivity.models: no model_card.json in {path}")
    source = config.prototypes.source
    if not is_source_name(source):
        path = Path(source) if Path(source).is_absolute() else base / source
        if not path.is_dir():
            from htvs.prototypes import SOURCE_NAMES

            names = ", ".join(repr(n) for n in SOURCE_NAMES)
            raise InvalidInput(
                f"prototypes.source: {source!r} is neither a source name ({names}) nor a folder "
                f"({path} does not exist)"
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


def substitution_config(config: CampaignConfig):
    """The ``SubstitutionConfig`` of a campaign (raises InvalidInput on a bad pool or rule)."""
    from htvs.substitution import SubstitutionConfig, SubstitutionRule

    section = config.substitution
    try:
        rule = SubstitutionRule(section.rule)
    except ValueError:
        raise InvalidInput(
            f"substitution.rule: unknown rule {section.rule!r}; choose from {[r.value for r in SubstitutionRule]}"
        ) from None
    kwargs: dict[str, Any] = {
        "kept_element": section.kept_element,
        "required_element": section.required_element,
        "rule": rule,
    }
    if section.element_pool is not None:
        kwargs["element_pool"] = section.element_pool
    return SubstitutionConfig(**kwargs)


def parse_campaign(data: Any, source: str = "campaign config") -> CampaignConfig:
    """Validate a loaded YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{source}: {_describe(exc)}") from None


def load_campaign(path: str | Path) -> CampaignConfig:
    """Read and fully validate a campaign YAML file (paths relative to the file's folder)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"campaign config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidInput(f"campaign config {path} is not valid YAML: {exc}") from None
    config = validate_campaign(parse_campaign(data, str(path)), base_dir=path.parent.resolve())
    return resolve_paths(config, path.parent.resolve())


def resolve_paths(config: CampaignConfig, base: Path) -> CampaignConfig:
    """Make the model folders and a folder prototype source absolute (relative to ``base``)."""
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
    models = config.conductivity.models
    conductivity = config.conductivity.model_copy(
        update={"models": base / models if models is not None and not models.is_absolute() else models}
    )
    return config.model_copy(update={"composition": composition, "prototypes": prototypes,
                                     "conductivity": conductivity})
