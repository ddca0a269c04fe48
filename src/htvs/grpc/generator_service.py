"""``htvs.v1.StructureGeneratorService``: stage 5 (candidate crystal structures) over gRPC.

Which errors are per row and which refuse the whole request:

* Whole request (INVALID_ARGUMENT, nothing generated): an empty batch or one above
  ``max_formulas``, an ``n_samples`` of 0 or above ``max_samples``, a seed above the stage's
  :data:`~htvs.generation.stage.MAX_SEED` (2^53-1), a ``step_lr`` outside [0, 1] or not finite,
  inline formulas together with a store ``input``. Messages name the value (the stage's own range
  checks, :class:`~htvs.generation.stage.GenerationConfig`).
* Per row (a ``RowError``, status OK, the other formulas generated): what
  :func:`~htvs.generation.stage.generate_structures` reports: a formula that cannot be read, holds
  an element without a trained embedding, has a non-integer amount or more atoms than
  ``max_atoms`` (one row, no ``sample``), and a sample whose lattice degenerated (its row, kind
  ``"StageFailed"``). Row values and messages are cut to :data:`MAX_ROW_TEXT_CHARS`.

The generator is loaded once per server (:func:`load_for_serving`, called by
:func:`htvs.grpc.serve.build_servicer`) and shared with the server's StageService. Where it
samples: :func:`htvs.generation.device.resolve_device` (``auto``: ``cuda`` when ``torch.cuda.is_available()``, else
``cpu``; or ``cpu``, ``cuda``, ``cuda:N`` as asked). On a GPU the denoiser runs there while the
sampler keeps drawing its random numbers on the CPU (:func:`on_device`), so a seed gives the same
noise on either device. One sampling runs at a time per server: torch's threads (``threads``)
are its parallelism, and calls that arrive meanwhile wait their turn (a caller that goes away
while waiting ends its call with CANCELLED or DEADLINE_EXCEEDED). A sampling under way is not
interrupted: the 1000 diffusion steps of a call run to the end.

Settings of ``htvs serve generator`` (:class:`GeneratorSettings`, environment variables, used
where :func:`~htvs.grpc.serve.build_servicer` is not given the value): ``HTVS_GENERATOR_MODEL``
(model folder; default the shipped ``htvs/models/generator``), ``HTVS_GENERATOR_THREADS`` (torch
intra-op threads, default 1), ``HTVS_GENERATOR_DEVICE`` (``auto``, the default; ``cpu``;
``cuda``; ``cuda:N``).

torch and the model are imported only when the servicer is built, never at import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from htvs.errors import InvalidInput, RowError, StageFailed
from htvs.grpc.gen import common_pb2
from htvs.grpc.gen import generator_pb2 as pb
from htvs.grpc.gen import generator_pb2_grpc as pb_grpc
from htvs.grpc.server import bounded_message, check_batch, report_rows, stop_if_caller_gone
from htvs.grpc.store_io import stored_batch

if TYPE_CHECKING:
    from htvs.generation.stage import GeneratedStructure, GenerationConfig, Generator

#: Default largest number of formulas per request (and per chunk of a store input).
DEFAULT_MAX_FORMULAS = 32
#: Default largest n_samples per request: with the formula limit, at most 1,024 cells per sampling.
DEFAULT_MAX_SAMPLES = 32
#: Longest row-error value or message in an answer, characters.
MAX_ROW_TEXT_CHARS = 1024
#: Seconds between two checks that a waiting caller is still there.
_WAIT_POLL_S = 0.25
_METRIC_FIELDS = ("valid_fraction", "match_rate", "rmse")


class GeneratorSettings(BaseSettings):
    """Settings of the generator service from ``HTVS_GENERATOR_*`` environment variables.

    Attributes:
        model: generator folder with ``weights.pt`` and ``model_card.json`` (None: the shipped one).
        threads: torch intra-op threads of a sampling.
        device: ``auto`` (``cuda`` when torch sees a GPU, else ``cpu``), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    model_config = SettingsConfigDict(env_prefix="HTVS_GENERATOR_", frozen=True, extra="ignore")

    model: Path | None = None
    threads: int = Field(1, ge=1, le=1024)
    device: str = "auto"

    @classmethod
    def from_env(cls) -> GeneratorSettings:
        """The settings in the environment now; InvalidInput names a bad variable and its value."""
        from pydantic import ValidationError

        try:
            return cls()
        except ValidationError as exc:
            problems = "; ".join(
                f"HTVS_GENERATOR_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']} (got {str(e.get('input'))[:80]!r})"
                for e in exc.errors()
            )
            raise InvalidInput(f"bad generator setting: {problems}") from None


def on_device(model, device: str):
    """``model`` (a CSP denoiser) computing on ``device`` behind the CPU interface the sampler uses.

    The returned module moves every tensor argument to ``device``, runs the denoiser with
    ``device`` as torch's default device (the denoiser builds index and embedding tensors inside
    its forward) and returns its outputs on the CPU. The sampler's noise stays on its CPU
    generator, so the same seed draws the same numbers on either device.
    """
    import torch

    target = torch.device(device)

    def moved(value):
        if isinstance(value, torch.Tensor):
            return value.to(target)
        if isinstance(value, tuple):
            return tuple(moved(v) for v in value)
        return value

    class DenoiserOnDevice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model.to(target)
            self.config = getattr(model, "config", None)
            self.device = target

        def forward(self, *args):
            with target:
                outputs = self.inner(*(moved(a) for a in args))
            return tuple(o.cpu() for o in outputs)

    return DenoiserOnDevice()


def load_for_serving(model_dir: Path | None, device: str) -> Generator:
    """The generator of ``model_dir`` (None: the shipped one) ready to sample on ``device``
    (a :func:`htvs.generation.device.resolve_device` result).

    Raises:
        ModelNotReady: no model there, or weights that do not match the card.
    """
    from htvs.generation.stage import load_generator

    generator = load_generator(model_dir)
    if device == "cpu":
        return generator
    return dataclasses.replace(generator, model=on_device(generator.model, device))


def chunk_seed(seed: int, start: int, limit: int) -> int:
    """The seed of the chunk of a store input that starts at table row ``start``: ``seed`` for
    the first chunk, else SHA-256 over ``"seed:start"`` reduced to 0..``limit`` (deterministic,
    and distinct chunks do not repeat each other's noise)."""
    if start == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}:{int(start)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (int(limit) + 1)


def _seed_chunk(request: pb.GenerateRequest, start: int) -> None:
    from htvs.generation.stage import MAX_SEED

    if request.seed <= MAX_SEED:  # a seed out of range is refused by Generate, naming the value as given
        request.seed = chunk_seed(request.seed, start, MAX_SEED)


def _cut(text: object) -> str:
    return bounded_message(str(text), MAX_ROW_TEXT_CHARS)


def _row_error(error: RowError) -> common_pb2.RowError:
    return common_pb2.RowError(index=error.index, value=_cut(error.value), message=_cut(error.message),
                               kind=error.kind)


def rows_of(formulas: list[str], results: list[GeneratedStructure | RowError],
            n_samples: int) -> list[pb.GeneratedStructureRow]:
    """The response rows of :func:`~htvs.generation.stage.generate_structures`' results.

    The stage gives, in formula order, one RowError for a refused formula and ``n_samples`` rows
    (a structure, or a RowError of kind ``"StageFailed"`` for a degenerate sample) for an accepted
    one; the sample number of a row is its position among its formula's rows.
    """
    rows: list[pb.GeneratedStructureRow] = []
    cursor = 0
    def take() -> GeneratedStructure | RowError:
        nonlocal cursor
        if cursor >= len(results):
            raise StageFailed(f"the stage gave {len(results)} rows for {len(formulas)} formulas x {n_samples} samples")
        cursor += 1
        return results[cursor - 1]

    for index, given in enumerate(formulas):
        formula = _cut(str(given).strip())
        first = take()
        if isinstance(first, RowError) and first.kind != "StageFailed":  # the formula was refused
            rows.append(pb.GeneratedStructureRow(formula=formula, error=_row_error(first)))
            continue
        for sample in range(n_samples):
            result = first if sample == 0 else take()
            if isinstance(result, RowError):
                rows.append(pb.GeneratedStructureRow(formula=formula, sample=sample, error=_row_error(
                    dataclasses.replace(result, index=index))))
                continue
            if result.sample != sample or not math.isfinite(result.volume_a3):
                raise StageFailed(f"the stage's row {cursor - 1} ({result.formula!r} sample {result.sample}) "
                                  f"is not sample {sample} of formula {index}")  # a stage contract broken
            rows.append(pb.GeneratedStructureRow(formula=formula, sample=sample, cif=result.cif,
                                                 num_atoms=result.num_atoms, volume_a3=result.volume_a3))
    if cursor != len(results):
        raise StageFailed(f"the stage gave {len(results)} rows for {len(formulas)} formulas x {n_samples} samples")
    return rows


def card_metrics(card: Mapping[str, Any]) -> tuple[str, list[pb.GeneratorMetrics]]:
    """(metrics task, metrics of the model and its baselines) from the card's ``metrics``
    section: every entry with at least one of valid_fraction/match_rate/rmse (``n`` 0 where it
    gives none); non-finite values are left unset."""
    metrics = card.get("metrics")
    if not isinstance(metrics, Mapping):
        return "", []
    out = []
    for name, values in metrics.items():
        if not isinstance(values, Mapping) or not any(k in values for k in _METRIC_FIELDS):
            continue
        fields: dict[str, Any] = {"model": str(name)}
        try:
            fields["n"] = max(int(values.get("n", 0) or 0), 0)
        except (TypeError, ValueError):
            fields["n"] = 0
        for key in _METRIC_FIELDS:
            try:
                value = float(values.get(key))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                fields[key] = value
        out.append(pb.GeneratorMetrics(**fields))
    return str(metrics.get("task", "")), out


class StructureGeneratorServicer(pb_grpc.StructureGeneratorServiceServicer):
    """Serves :func:`~htvs.generation.stage.generate_structures`.

    Args:
        generator: the loaded generator (:func:`load_for_serving`).
        device: where it samples (reported by Info).
        threads: torch intra-op threads of a sampling.
        max_formulas: most formulas per request (and per chunk of a store input).
        max_samples: largest ``n_samples``.
        max_atoms: largest cell, atoms (default: the stage's, :class:`GenerationConfig`).
        model_dir: the folder ``generator`` was loaded from (None: the shipped model); a campaign
            stage naming another generator is refused by the StageService.
    """

    service_name = pb.DESCRIPTOR.services_by_name["StructureGeneratorService"].full_name
    #: The server's store, for calls whose formulas come from it (``input``); set by ``serve``.
    store = None

    def __init__(
        self,
        generator: Generator,
        *,
        device: str = "cpu",
        threads: int = 1,
        max_formulas: int = DEFAULT_MAX_FORMULAS,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_atoms: int | None = None,
        model_dir: Path | None = None,
    ) -> None:
        from htvs.generation.stage import GenerationConfig

        for name, value in (("max_formulas", max_formulas), ("max_samples", max_samples), ("threads", threads)):
            if isinstance(value, bool) or int(value) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {value!r}")
        defaults = GenerationConfig()
        self.generator = generator
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.device = device
        self.threads = int(threads)
        self.max_batch_rows = int(max_formulas)  # the row limit, also the chunk of a store input
        self.max_samples = int(max_samples)
        self.max_atoms = int(max_atoms if max_atoms is not None else defaults.max_atoms)
        if self.max_atoms < 1:
            raise InvalidInput(f"max_atoms must be >= 1, got {max_atoms!r}")
        self.default_step_lr = defaults.step_lr
        self._sampling = threading.Lock()

    @property
    def max_formulas(self) -> int:
        return self.max_batch_rows

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_StructureGeneratorServiceServicer_to_server(self, server)

    def config_of(self, request: pb.GenerateRequest) -> GenerationConfig:
        """The stage's settings for ``request`` (unset n_samples: 1, unset step_lr: the stage's
        default); InvalidInput names a value out of its range (the stage's own checks, with this
        server's max_samples and max_atoms)."""
        from htvs.generation.stage import GenerationConfig

        try:
            return GenerationConfig(
                n_samples=request.n_samples if request.HasField("n_samples") else 1,
                max_atoms=self.max_atoms,
                max_samples=self.max_samples,
                seed=int(request.seed),
                step_lr=float(request.step_lr) if request.HasField("step_lr") else self.default_step_lr,
                threads=self.threads,
            )
        except InvalidInput as exc:
            raise InvalidInput(f"GenerateRequest: {exc}") from None

    def generate(self, formulas: list[str], config: GenerationConfig, context=None) -> list:
        """:func:`generate_structures` under the server's one-sampling-at-a-time lock; a caller
        that goes away while it waits ends its call (``context`` given)."""
        from htvs.generation.stage import generate_structures

        while not self._sampling.acquire(timeout=_WAIT_POLL_S):
            if context is not None:
                stop_if_caller_gone(context)
        try:
            if context is not None:
                stop_if_caller_gone(context)
            return generate_structures(formulas, self.generator, config)
        finally:
            self._sampling.release()

    # -- RPCs -------------------------------------------------------------------------------

    @stored_batch("formulas", ("rows",), pb.GenerateResponse, summed=("n_formulas", "n_generated", "n_errors"),
                  chunk_request=_seed_chunk)
    def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        check_batch(request, len(request.formulas), "formulas", self.max_batch_rows)
        config = self.config_of(request)
        formulas = list(request.formulas)
        rows = rows_of(formulas, self.generate(formulas, config, context), config.n_samples)
        n_errors = sum(1 for row in rows if row.HasField("error"))
        report_rows(len(rows), n_errors)
        return pb.GenerateResponse(
            rows=rows,
            n_formulas=len(formulas),
            n_generated=len(rows) - n_errors,
            n_errors=n_errors,
            n_samples=config.n_samples,
            seed=config.seed,
            step_lr=config.step_lr,
            max_atoms=config.max_atoms,
        )

    def Info(self, request: pb.GeneratorInfoRequest, context) -> pb.GeneratorInfoResponse:
        from pymatgen.core import Element

        card = self.generator.card if isinstance(self.generator.card, Mapping) else {}
        numbers = sorted(int(z) for z in self.generator.elements)
        task, metrics = card_metrics(card)
        try:
            steps = max(int(card.get("steps", 0) or 0), 0)
        except (TypeError, ValueError):
            steps = 0
        return pb.GeneratorInfoResponse(
            name=str(card.get("name", "")),
            task=str(card.get("task", "")),
            data=str(card.get("data", "")),
            split=str(card.get("split", "")),
            caveat=str(card.get("caveat", "")),
            elements=[Element.from_Z(z).symbol for z in numbers],
            atomic_numbers=numbers,
            max_atoms=self.max_atoms,
            max_samples=self.max_samples,
            max_formulas=self.max_formulas,
            training_steps=steps,
            sampling_steps=int(self.generator.schedule.timesteps),
            metrics_task=task,
            metrics=metrics,
            metrics_json=_metrics_json(card.get("metrics")),
            sha256=str(card.get("sha256", "")),
            device=self.device,
            threads=self.threads,
        )


def stage_backend(servicer: StructureGeneratorServicer):
    """The in-process backend of the server's StageService (stage ``generate``): the server's
    loaded generator (on its device), sampling under the server's one-at-a-time lock."""
    from htvs.campaign.stages import InProcessBackend

    class GeneratorBackend(InProcessBackend):
        def generate(self, formulas: list[str], config, seed: int) -> list:
            with servicer._sampling:
                return super().generate(formulas, config, seed)

    return GeneratorBackend(_generator=servicer.generator)


def _metrics_json(metrics: Any) -> str:
    """The card's metrics section as strict JSON ("{}" when it is not a mapping or holds NaN)."""
    if not isinstance(metrics, Mapping):
        return "{}"
    try:
        return json.dumps(metrics, sort_keys=True, allow_nan=False, default=str)
    except ValueError:
        return "{}"
