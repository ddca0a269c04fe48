"""``htvs.v1.SubstitutionService``: stage 1 (elemental substitution) over gRPC.

Substitute is whole-request: the stage validates the prototypes and the configuration as a
whole and reduces all substitutions to unique formulas, so a bad prototype refuses the request
(INVALID_ARGUMENT naming it) rather than silently changing multiplicities. Prototype sets the
server may substitute by name (``"bundled"``) are loaded once, before the server starts.

Every value a message echoes is cut by :func:`htvs.errors.shown` to 80 characters (a status
message travels in metadata, which is limited in size); a prototype id longer than
:data:`MAX_PROTOTYPE_ID_CHARS` and an element pool of more than
:data:`~htvs.substitution.config.MAX_POOL_SIZE` symbols are refused before any other work.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import numpy as np
from pymatgen.core import Element

from htvs.errors import DataNotFound, InvalidInput, shown
from htvs.grpc.gen import substitution_pb2 as pb
from htvs.grpc.gen import substitution_pb2_grpc as pb_grpc
from htvs.grpc.server import report_rows
from htvs.grpc.store_io import stored_batch
from htvs.prototypes.records import PrototypeSet
from htvs.substitution import (
    SitePattern,
    SubstitutionConfig,
    SubstitutionResult,
    SubstitutionRule,
    count_assignments,
    enumerate_substitutions,
)
from htvs.substitution.config import MAX_POOL_SIZE
from htvs.substitution.enumerate import UNUSED_SLOT

#: Default largest number of inline prototypes per request.
DEFAULT_MAX_PROTOTYPES = 20_000
#: Default largest number of rows (formulas, or substitutions when asked for) in one answer.
DEFAULT_MAX_RESULT_ROWS = 1_000_000
#: Longest inline prototype id, characters.
MAX_PROTOTYPE_ID_CHARS = 200

_RULES = {
    pb.SUBSTITUTION_RULE_UNSPECIFIED: SubstitutionRule.ONE_REQUIRED,
    pb.SUBSTITUTION_RULE_ONE_REQUIRED: SubstitutionRule.ONE_REQUIRED,
    pb.SUBSTITUTION_RULE_ALL_DISTINCT: SubstitutionRule.ALL_DISTINCT,
}


def config_from_proto(message: pb.SubstitutionConfig) -> SubstitutionConfig:
    """The stage's :class:`SubstitutionConfig`; unset fields take its defaults.

    Raises:
        InvalidInput: unknown rule, a pool of more than ``MAX_POOL_SIZE`` symbols, a symbol that is
            not an element, or what :class:`SubstitutionConfig` refuses (pool without the kept
            element...).
    """
    if message.rule not in _RULES:
        raise InvalidInput(f"config.rule {message.rule} is not a known SubstitutionRule")
    if len(message.element_pool) > MAX_POOL_SIZE:
        raise InvalidInput(
            f"config.element_pool has {len(message.element_pool):,} symbols (at most {MAX_POOL_SIZE})"
        )
    for i, symbol in enumerate(message.element_pool):
        _check_symbol(f"config.element_pool[{i}]", symbol)
    if message.kept_element:
        _check_symbol("config.kept_element", message.kept_element)
    if message.required_element:
        _check_symbol("config.required_element", message.required_element)
    defaults = SubstitutionConfig()
    required = message.required_element if message.HasField("required_element") else defaults.required_element
    return SubstitutionConfig(
        element_pool=tuple(message.element_pool) or defaults.element_pool,
        kept_element=message.kept_element or defaults.kept_element,
        required_element=required or None,
        rule=_RULES[message.rule],
    )


def _check_symbol(field: str, symbol: str) -> None:
    if not Element.is_valid_symbol(symbol):
        raise InvalidInput(f"{field}: {shown(symbol)} is not an element symbol")


def pattern_from_proto(message: pb.SitePattern, index: int) -> SitePattern:
    """A :class:`SitePattern` from its message; symbols and amounts are checked here.

    Raises:
        InvalidInput: empty or overlong (:data:`MAX_PROTOTYPE_ID_CHARS`) id, empty species list, a
            symbol that is not an element, an element listed twice, or an amount of 0; the
            message names the prototype and value.
    """
    name = message.prototype_id
    if not name:
        raise InvalidInput(f"prototypes[{index}] has no prototype_id")
    if len(name) > MAX_PROTOTYPE_ID_CHARS:
        raise InvalidInput(
            f"prototypes[{index}].prototype_id {shown(name)} is longer than {MAX_PROTOTYPE_ID_CHARS} characters"
        )
    if not message.species:
        raise InvalidInput(f"prototype {name!r} lists no species")
    amounts: dict[str, int] = {}
    for species in message.species:
        symbol = species.element
        if not Element.is_valid_symbol(symbol):
            raise InvalidInput(f"prototype {name!r}: {shown(symbol)} is not an element symbol")
        if symbol in amounts:
            raise InvalidInput(f"prototype {name!r} lists {symbol} more than once")
        if species.amount <= 0:
            raise InvalidInput(f"prototype {name!r}: amount of {symbol} must be a positive integer, got 0")
        amounts[symbol] = int(species.amount)
    return SitePattern(name, amounts)


def pattern_to_proto(pattern: SitePattern) -> pb.SitePattern:
    return pb.SitePattern(
        prototype_id=pattern.prototype_id,
        species=[pb.SpeciesAmount(element=s, amount=int(n)) for s, n in pattern.species_amounts.items()],
    )


def result_to_proto(result: SubstitutionResult, include_substitutions: bool) -> pb.SubstituteResponse:
    """The response of a substitution result (formulas; every substitution when asked)."""
    response = pb.SubstituteResponse(
        n_prototypes=len(result.prototype_ids), n_substitutions=result.n_substitutions
    )
    formulas = response.formulas
    for formula, chemsys, atoms, count in zip(
        result.formulas, result.chemsys, result.num_atoms.tolist(), result.multiplicity.tolist(), strict=True
    ):
        formulas.add(formula=formula, chemsys=chemsys, num_atoms=atoms, multiplicity=count)
    if include_substitutions:
        pool = result.config.element_pool
        rows = response.substitutions
        slots = result.slot_elements.tolist()
        for proto, formula_index, slot_row in zip(
            result.prototype_index.tolist(), result.formula_index.tolist(), slots, strict=True
        ):
            species = result.prototype_species[proto]
            rows.add(
                prototype_id=result.prototype_ids[proto],
                replacements=[
                    pb.Replacement(from_element=s, to_element=pool[e])
                    for s, e in zip(species, slot_row, strict=False)
                    if e != UNUSED_SLOT
                ],
                formula=result.formulas[formula_index],
            )
    return response


class SubstitutionServicer(pb_grpc.SubstitutionServiceServicer):
    """Serves :func:`htvs.substitution.enumerate_substitutions`.

    Args:
        prototype_sets: named prototype sets loaded before the server starts (e.g.
            ``{"bundled": load_prototypes("bundled")}``); requests may substitute them by name.
        max_prototypes: most inline prototypes per request.
        max_result_rows: most formulas (or substitutions, when asked for) in one answer.
    """

    service_name = pb.DESCRIPTOR.services_by_name["SubstitutionService"].full_name
    #: The server's store, for batch calls whose rows come from it (``input``); set by ``serve``.
    store = None

    def __init__(
        self,
        prototype_sets: Mapping[str, PrototypeSet] | None = None,
        *,
        max_prototypes: int = DEFAULT_MAX_PROTOTYPES,
        max_result_rows: int = DEFAULT_MAX_RESULT_ROWS,
    ) -> None:
        if max_prototypes < 1 or max_result_rows < 1:
            raise InvalidInput(
                f"max_prototypes and max_result_rows must be >= 1, got {max_prototypes}, {max_result_rows}"
            )
        self.prototype_sets = dict(prototype_sets or {})
        self._patterns = {
            name: [SitePattern(p.id, dict(p.species_amounts)) for p in loaded.prototypes]
            for name, loaded in self.prototype_sets.items()
        }
        self.max_prototypes = int(max_prototypes)
        self.max_result_rows = int(max_result_rows)

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_SubstitutionServiceServicer_to_server(self, server)

    def _available(self) -> str:
        """The loaded sets' names for a message (each cut, at most 10 of them)."""
        names = sorted(self._patterns)
        if not names:
            return "no prototype sets"
        listed = ", ".join(shown(n) for n in names[:10])
        return listed + (f" and {len(names) - 10} more" if len(names) > 10 else "")

    def _set(self, name: str) -> list[SitePattern]:
        if name not in self._patterns:
            raise DataNotFound(
                f"no prototype set {shown(name)} on this server (available: {self._available()})"
            )
        return self._patterns[name]

    def ListPrototypes(self, request: pb.ListPrototypesRequest, context) -> pb.ListPrototypesResponse:
        if not request.prototype_set:
            raise InvalidInput(f"prototype_set is empty; this server has {self._available()}")
        patterns = self._set(request.prototype_set)
        skipped = self.prototype_sets[request.prototype_set].skipped
        report_rows(len(patterns))
        return pb.ListPrototypesResponse(
            prototypes=[pattern_to_proto(p) for p in patterns],
            skipped=[pb.SkippedInput(name=s.name, reason=s.reason) for s in skipped],
        )

    @stored_batch("prototypes", ("formulas", "substitutions"), pb.SubstituteResponse, rowwise=False)
    def Substitute(self, request: pb.SubstituteRequest, context) -> pb.SubstituteResponse:
        n_inline = len(request.prototypes)
        if request.prototype_set and n_inline:
            raise InvalidInput(f"give prototypes or prototype_set {shown(request.prototype_set)}, not both")
        if request.prototype_set:
            patterns = self._set(request.prototype_set)
        else:
            if n_inline == 0:
                raise InvalidInput("SubstituteRequest has no prototypes and no prototype_set")
            if n_inline > self.max_prototypes:
                raise InvalidInput(
                    f"SubstituteRequest has {n_inline} prototypes, more than this server's limit of "
                    f"{self.max_prototypes}; split the request"
                )
            patterns = [pattern_from_proto(p, i) for i, p in enumerate(request.prototypes)]
        config = config_from_proto(request.config)
        if request.include_substitutions:
            expected = sum(
                count_assignments(config, sum(1 for s in p.species_amounts if s != config.kept_element))
                for p in patterns
            )
            self._check_rows(expected, "substitutions")
        result = enumerate_substitutions(patterns, config)
        self._check_rows(result.n_unique, "unique formulas")
        report_rows(len(patterns))
        return result_to_proto(result, request.include_substitutions)

    def _check_rows(self, rows: int | np.integer, what: str) -> None:
        if rows > self.max_result_rows:
            raise InvalidInput(
                f"the answer would have {int(rows):,} {what}, more than this server's limit of "
                f"{self.max_result_rows:,} rows; send fewer prototypes per request"
            )
