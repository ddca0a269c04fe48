"""Property-based tests (Hypothesis) of the formula parsers and of what a request can make
CompositionService and SubstitutionService do.

* Any text given as a formula parses (elements only, positive finite amounts, a bounded number of
  atoms) or is refused with InvalidInput naming it, never another exception; the same for the
  parsers behind Hull/Window (``ReferenceHull.composition``) and Predict (``parse_fractions``).
* Whatever the request fields hold (random text, NaN, infinities, huge or negative numbers, long
  strings), an RPC answers OK, with per-row errors and no NaN or infinity in any double, or
  refuses with INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED and a message under 2,000
  characters; never INTERNAL or UNKNOWN, and the server keeps serving.
"""

from __future__ import annotations

import math

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from pymatgen.core import Composition, Element  # noqa: E402

from htvs.composition.featurize import parse_fractions  # noqa: E402
from htvs.composition.predictor import OnnxRoostEnsemble  # noqa: E402
from htvs.errors import InvalidInput  # noqa: E402
from htvs.formula import MAX_ATOMS_PER_FORMULA, parse_composition  # noqa: E402
from htvs.grpc.composition_service import CompositionServicer  # noqa: E402
from htvs.grpc.gen import common_pb2  # noqa: E402
from htvs.grpc.gen import composition_pb2 as cpb  # noqa: E402
from htvs.grpc.gen import composition_pb2_grpc as cpb_grpc  # noqa: E402
from htvs.grpc.gen import substitution_pb2 as spb  # noqa: E402
from htvs.grpc.gen import substitution_pb2_grpc as spb_grpc  # noqa: E402
from htvs.grpc.server import create_server  # noqa: E402
from htvs.grpc.substitution_service import SubstitutionServicer  # noqa: E402
from htvs.prototypes.records import PrototypeSet  # noqa: E402
from htvs.thermo import ReferenceHull  # noqa: E402
from test_hardening_composition import non_finite_doubles  # noqa: E402
from tiny_models import tiny_model_pair  # noqa: E402

pytestmark = [pytest.mark.grpc, pytest.mark.timeout(300)]

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
MAX_MESSAGE = 2000

# --------------------------------------------------------------------------- strategies

SYMBOLS = ["Li", "P", "S", "O", "Cl", "La", "Zr", "Fe", "N", "X", "Xx", "D", "Uue", "Zz", "e", "li", "LI"]
counts = st.one_of(
    st.just(""),
    st.integers(0, 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from([".5", ".", "0", "0.0", "1e400", "1e-9", "-1", "1.2.3", "\u0663", "\uff13", "e5", "2+"]),
)
tokens = st.tuples(st.sampled_from(SYMBOLS), counts).map("".join)
groups = st.recursive(
    tokens,
    lambda inner: st.tuples(st.sampled_from("([{"), st.lists(inner, min_size=1, max_size=3).map("".join), counts)
    .map(lambda t: f"{t[0]}{t[1]}{')]}'['([{'.index(t[0])]}{t[2]}"),
    max_leaves=8,
)
formulas = st.one_of(
    st.text(max_size=40),
    st.lists(groups, min_size=1, max_size=5).map("".join),
    st.text(alphabet="LiPSOClXx()[]{}0123456789.e-+ \u00b7\t", max_size=60),
    st.integers(1, 400).map(lambda n: "(" * n + "Li" + ")2" * n),
    st.integers(250, 6000).map(lambda n: "Li" * (n // 2)),
    st.sampled_from(["Li3PS4", "Li6PS5Cl", "Li7La3Zr2O12", "LiCl", "Li2S", "P2S5", "Li", "LiOPSHNFeCuCSiMg"]),
)
doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -0.0, 5e-324, -3.0, -1.2, 0.1, 3.0]),
)
names = st.one_of(st.text(max_size=30), st.sampled_from(["toy", "bundled", ""]), st.integers(1000, 6000).map("n".__mul__))


def check_parsed(formula: str, parse) -> None:
    try:
        comp = parse(formula)
    except InvalidInput as exc:
        message = str(exc)
        assert repr(formula)[:20] in message and len(message) < MAX_MESSAGE, message[:300]
        return
    assert isinstance(comp, Composition) and len(comp) > 0
    assert all(isinstance(el, Element) for el in comp)
    assert all(math.isfinite(x) and x > 0 for x in comp.values())
    assert comp.num_atoms <= MAX_ATOMS_PER_FORMULA


@pytest.fixture(scope="module")
def hull() -> ReferenceHull:
    return ReferenceHull.bundled()


@given(formulas)
def test_parse_composition_parses_or_refuses_naming_the_formula(formula):
    check_parsed(formula, parse_composition)


@given(formulas)
def test_the_hull_parser_parses_or_refuses_naming_the_formula(hull, formula):
    check_parsed(formula, hull.composition)


@given(formulas)
def test_the_predict_parser_parses_or_refuses_naming_the_formula(formula):
    try:
        z, weights = parse_fractions(formula)
    except InvalidInput as exc:
        assert repr(formula)[:20] in str(exc)
        return
    assert len(z) == len(weights) > 0
    assert all(math.isfinite(w) and w > 0 for w in weights) and math.isclose(sum(weights), 1.0)


# --------------------------------------------------------------------------- services on loopback


@pytest.fixture(scope="module")
def channel(hull, tmp_path_factory):
    from test_grpc_services import li3ps4_prototype

    ef, gap = tiny_model_pair(tmp_path_factory.mktemp("models"))
    models = [OnnxRoostEnsemble.from_dir(p, intra_op_threads=1) for p in (ef, gap)]
    toy = PrototypeSet((li3ps4_prototype(),), ())
    server, port = create_server(
        "127.0.0.1:0",
        CompositionServicer(hull, *models, max_batch_rows=8),
        SubstitutionServicer({"toy": toy}, max_prototypes=8, max_result_rows=50_000),
        max_message_bytes=1024 * 1024,
    )
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    server.stop(None).wait()


def answered(call, request):
    """The answer of ``call(request)``, checked for NaN; None for an allowed, bounded refusal."""
    try:
        answer = call(request, timeout=60)
    except grpc.RpcError as err:
        assert err.code() in ALLOWED, (err.code(), (err.details() or "")[:300])
        assert len(err.details() or "") < MAX_MESSAGE
        return None
    assert non_finite_doubles(answer) == []
    return answer


def optional(strategy):
    return st.one_of(st.none(), strategy)


@settings(max_examples=50)
@given(st.lists(formulas, min_size=0, max_size=10))
def test_predict_requests(channel, batch):
    answer = answered(cpb_grpc.CompositionServiceStub(channel).Predict, cpb.PredictRequest(formulas=batch))
    if answer is not None:
        assert len(answer.rows) == len(batch) and 1 <= len(batch) <= 8
        for row in answer.rows:
            assert row.HasField("error") or row.HasField("e_form_mean")
            assert len(row.error.message) < 1100 and len(row.error.value) < 1100


def prediction(formula, values, error):
    fields = dict(zip(("e_form_mean", "e_form_std", "band_gap_mean", "band_gap_std"), values, strict=True))
    row = cpb.Prediction(formula=formula, **{k: v for k, v in fields.items() if v is not None})
    if error is not None:
        row.error.CopyFrom(common_pb2.RowError(message=error, value=formula))
    return row


usable = st.tuples(st.floats(-5, 1), st.floats(0, 1), st.floats(0, 8), st.floats(0, 1))
predictions = st.one_of(
    st.builds(prediction, formulas, usable, st.none()),  # what Predict answers
    st.builds(prediction, formulas, st.tuples(*[optional(doubles)] * 4), st.text(max_size=20)),  # errors, any values
    st.builds(prediction, formulas, st.tuples(*[optional(doubles)] * 4), optional(st.text(max_size=20))),
)
THRESHOLDS = ("max_e_form_ev_per_atom", "max_e_above_hull_ev_per_atom", "min_band_gap_ev", "min_phi_ox_v")
thresholds = st.one_of(
    st.just(cpb.ScreenThresholds()),  # the paper's
    st.builds(lambda values: cpb.ScreenThresholds(**dict(zip(THRESHOLDS, values, strict=True))),
              st.tuples(st.floats(-1, 1), st.floats(0, 1), st.floats(0, 5), st.floats(0, 6))),
    st.builds(lambda values: cpb.ScreenThresholds(**{k: v for k, v in values.items() if v is not None}),
              st.fixed_dictionaries({k: optional(doubles) for k in THRESHOLDS})),
)  # fmt: skip


@settings(max_examples=60)
@given(st.lists(predictions, min_size=1, max_size=8), thresholds)
def test_screen_requests(channel, rows, limits):
    request = cpb.ScreenRequest(predictions=rows, thresholds=limits)
    answer = answered(cpb_grpc.CompositionServiceStub(channel).Screen, request)
    if answer is not None:
        assert len(answer.rows) == len(rows)
        assert answer.funnel.formulas == len(rows) >= answer.funnel.predicted


queries = st.tuples(formulas, optional(doubles))


@settings(max_examples=60)
@given(st.lists(queries, min_size=1, max_size=8))
def test_hull_and_window_requests(channel, rows):
    stub = cpb_grpc.CompositionServiceStub(channel)
    hull_rows = [cpb.HullQuery(formula=f, **({} if e is None else {"e_form_ev_per_atom": e})) for f, e in rows]
    window_rows = [cpb.WindowQuery(formula=f, **({} if e is None else {"e_form_ev_per_atom": e})) for f, e in rows]
    for call, request in ((stub.Hull, cpb.HullRequest(rows=hull_rows)), (stub.Window, cpb.WindowRequest(rows=window_rows))):
        answer = answered(call, request)
        if answer is not None:
            assert len(answer.rows) == len(rows)
            for row in answer.rows:
                assert len(row.error.message) < 1100 and len(row.error.value) < 1100


elements = st.one_of(st.sampled_from(["Li", "S", "P", "O", "Cl", "Se", "Xx", "", "li"]), st.text(max_size=8),
                     st.integers(100, 6000).map("S".__mul__))  # fmt: skip
site_patterns = st.builds(
    lambda name, species: spb.SitePattern(
        prototype_id=name, species=[spb.SpeciesAmount(element=e, amount=n) for e, n in species]
    ),
    names,
    st.lists(st.tuples(elements, st.one_of(st.integers(0, 12), st.just(2**32 - 1))), max_size=5),
)
configs = st.builds(
    lambda pool, kept, required, rule: spb.SubstitutionConfig(
        element_pool=pool, kept_element=kept, rule=rule, **({} if required is None else {"required_element": required})
    ),
    st.one_of(st.just([]), st.lists(elements, max_size=8), st.just(["Li", "S", "P", "O", "Cl", "Se", "Br", "I"])),
    st.one_of(st.just(""), elements),
    optional(elements),
    st.integers(0, 9),
)


@settings(max_examples=60)
@given(names)
def test_list_prototypes_requests(channel, name):
    answer = answered(spb_grpc.SubstitutionServiceStub(channel).ListPrototypes, spb.ListPrototypesRequest(prototype_set=name))
    assert (answer is not None) == (name == "toy")


@settings(max_examples=80)
@given(st.lists(site_patterns, max_size=9), optional(names), configs, st.booleans())
def test_substitute_requests(channel, patterns, set_name, config, include):
    request = spb.SubstituteRequest(prototypes=patterns, config=config, include_substitutions=include,
                                    prototype_set=set_name or "")  # fmt: skip
    answered(spb_grpc.SubstitutionServiceStub(channel).Substitute, request)

