"""flashparity.classify: the seed's tests, twinned; every variant; the order of checks; Python's traps."""

from __future__ import annotations

import json
import math

import pytest

from flashparity.classify import (
    DEFAULT_MAX_ABS_DIFF,
    DEFAULT_MIN_COSINE_SIM,
    KERNEL_SOURCE_PREFIX,
    HeadDimErrorOutcome,
    ParityNumericsOutcome,
    ProvenanceOutcome,
    classify_head_dim_error,
    classify_parity_numerics,
    classify_provenance,
)

P = ParityNumericsOutcome
V = ProvenanceOutcome
H = HeadDimErrorOutcome
SHA = "abcdef0123456789abcdef0123456789abcdef01"


def parity(body, tol_abs=5e-3, tol_cos=0.9999):
    return classify_parity_numerics(body, tol_abs, tol_cos)


# ---- constants -----------------------------------------------------------------------------------


def test_constants_match_seed():
    assert DEFAULT_MAX_ABS_DIFF == 5e-3
    assert DEFAULT_MIN_COSINE_SIM == 0.9999
    assert KERNEL_SOURCE_PREFIX == "hf-kernels-community:flash-attn2@"


# ---- twins of the seed's tests -------------------------------------------------------------------


def test_parity_ok_inside_tolerance():
    out = parity({"max_abs_diff": 0.002, "cosine_sim": 0.99999})
    assert out.kind == "Ok" and out.ok
    assert out == P.Ok(max_abs_diff=0.002, cosine_sim=0.99999)


def test_parity_rejects_max_abs_diff_above_tolerance():
    out = parity({"max_abs_diff": 0.01, "cosine_sim": 0.99999})
    assert out == P.MaxAbsDiffExceedsTolerance(got=0.01, tolerance=5e-3)


def test_parity_rejects_cosine_below_floor():
    out = parity({"max_abs_diff": 0.001, "cosine_sim": 0.99})
    assert out == P.CosineSimBelowFloor(got=0.99, floor=0.9999)


def test_parity_rejects_missing_keys():
    assert parity({"cosine_sim": 1.0}) == P.MissingMaxAbsDiff()
    assert parity({"max_abs_diff": 0.0}) == P.MissingCosineSim()


def test_provenance_ok_on_pinned_flash2():
    out = classify_provenance({"attn_impl": "flash2", "kernel_source": f"hf-kernels-community:flash-attn2@{SHA}"})
    assert out == V.OkFlash2(sha=SHA)
    assert out.sha == SHA


def test_provenance_rejects_malformed_sha():
    body = {"attn_impl": "flash2", "kernel_source": "hf-kernels-community:flash-attn2@short"}
    assert classify_provenance(body).kind == "KernelSourceMalformed"


def test_provenance_rejects_missing_kernel_source_when_flash2():
    assert classify_provenance({"attn_impl": "flash2"}) == V.KernelSourceMissing()


def test_provenance_ok_on_naive_with_fallback_reason():
    assert classify_provenance({"attn_impl": "naive", "fallback": "no-gpu"}) == V.OkFallback(reason="no-gpu")


def test_provenance_rejects_naive_without_fallback():
    assert classify_provenance({"attn_impl": "naive"}) == V.FallbackMissingWhenNotFlash2(attn_impl="naive")


def test_provenance_rejects_unknown_attn_impl():
    assert classify_provenance({"attn_impl": "unobtanium"}) == V.UnknownAttnImpl(got="unobtanium")


def test_head_dim_error_ok_on_unsupported_message():
    out = classify_head_dim_error({"error": "unsupported-head-dim: got 96, expected 64 or 128"})
    assert out.kind == "Ok" and out.ok
    assert "unsupported-head-dim" in out.error


def test_head_dim_error_rejects_irrelevant_error():
    assert classify_head_dim_error({"error": "out of memory"}) == H.ErrorDoesNotMentionHeadDim(got="out of memory")


def test_head_dim_error_rejects_missing_error_field():
    assert classify_head_dim_error({}) == H.MissingErrorField()


# ---- every variant, its fields and ok flag -------------------------------------------------------

PARITY_CASES = [
    ({"max_abs_diff": 0.001, "cosine_sim": 1.0}, P.Ok(max_abs_diff=0.001, cosine_sim=1.0)),
    ([], P.NotAnObject()),
    ({"cosine_sim": 1.0}, P.MissingMaxAbsDiff()),
    ({"max_abs_diff": 0.0}, P.MissingCosineSim()),
    ({"max_abs_diff": math.inf, "cosine_sim": 1.0}, P.NonFiniteMaxAbsDiff(got=math.inf)),
    ({"max_abs_diff": 0.0, "cosine_sim": -math.inf}, P.NonFiniteCosineSim(got=-math.inf)),
    ({"max_abs_diff": 1.0, "cosine_sim": 1.0}, P.MaxAbsDiffExceedsTolerance(got=1.0, tolerance=5e-3)),
    ({"max_abs_diff": 0.0, "cosine_sim": 0.5}, P.CosineSimBelowFloor(got=0.5, floor=0.9999)),
]


@pytest.mark.parametrize("body,expected", PARITY_CASES, ids=[e.kind for _, e in PARITY_CASES])
def test_parity_every_variant(body, expected):
    out = parity(body)
    assert out == expected
    assert out.ok is (expected.kind == "Ok")
    assert isinstance(out, ParityNumericsOutcome)
    d = out.to_dict()
    assert d["outcome"] == expected.kind and d["ok"] is out.ok
    assert {k: v for k, v in d.items() if k not in ("outcome", "ok")} == expected.fields()
    assert json.loads(json.dumps(d)) == d  # JSON-ready


def test_parity_variant_names_are_the_seeds():
    assert P.VARIANTS == (
        "Ok", "NotAnObject", "MissingMaxAbsDiff", "MissingCosineSim", "NonFiniteMaxAbsDiff",
        "NonFiniteCosineSim", "MaxAbsDiffExceedsTolerance", "CosineSimBelowFloor",
    )
    assert V.VARIANTS == (
        "OkFlash2", "OkFallback", "NotAnObject", "MissingAttnImpl", "UnknownAttnImpl",
        "KernelSourceMissing", "KernelSourceMalformed", "FallbackMissingWhenNotFlash2",
    )
    assert H.VARIANTS == ("Ok", "NotAnObject", "MissingErrorField", "ErrorDoesNotMentionHeadDim")


PROVENANCE_CASES = [
    ({"attn_impl": "flash2", "kernel_source": KERNEL_SOURCE_PREFIX + SHA}, V.OkFlash2(sha=SHA)),
    ({"attn_impl": "fallback", "fallback": "unsupported-head-dim: got 512"},
     V.OkFallback(reason="unsupported-head-dim: got 512")),
    ("flash2", V.NotAnObject()),
    ({}, V.MissingAttnImpl()),
    ({"attn_impl": "FLASH2"}, V.UnknownAttnImpl(got="FLASH2")),
    ({"attn_impl": "flash2", "kernel_source": None}, V.KernelSourceMissing()),
    ({"attn_impl": "flash2", "kernel_source": "flashparity:flash2@" + SHA},
     V.KernelSourceMalformed(got="flashparity:flash2@" + SHA)),
    ({"attn_impl": "fallback", "fallback": ""}, V.FallbackMissingWhenNotFlash2(attn_impl="fallback")),
]


@pytest.mark.parametrize("body,expected", PROVENANCE_CASES, ids=[e.kind for _, e in PROVENANCE_CASES])
def test_provenance_every_variant(body, expected):
    out = classify_provenance(body)
    assert out == expected
    assert out.ok is expected.kind.startswith("Ok")
    assert out.to_dict() == {"outcome": expected.kind, "ok": out.ok, **expected.fields()}


HEAD_DIM_CASES = [
    ({"error": "bad head_dim 300"}, H.Ok(error="bad head_dim 300")),
    ({"error": "head-dim must be <= 256"}, H.Ok(error="head-dim must be <= 256")),
    (None, H.NotAnObject()),
    ({"error": 1}, H.MissingErrorField()),
    ({"error": "HEAD_DIM too big"}, H.ErrorDoesNotMentionHeadDim(got="HEAD_DIM too big")),  # case-sensitive
]


@pytest.mark.parametrize("body,expected", HEAD_DIM_CASES, ids=[e.kind for _, e in HEAD_DIM_CASES])
def test_head_dim_every_variant(body, expected):
    out = classify_head_dim_error(body)
    assert out == expected
    assert out.ok is (expected.kind == "Ok")


# ---- order of checks -----------------------------------------------------------------------------


def test_parity_order_missing_before_nonfinite():
    # max_abs_diff is NaN but cosine_sim is missing: the missing key is reported first.
    assert parity({"max_abs_diff": math.nan}) == P.MissingCosineSim()


def test_parity_order_nonfinite_mad_before_nonfinite_cos():
    out = parity({"max_abs_diff": math.inf, "cosine_sim": math.nan})
    assert out.kind == "NonFiniteMaxAbsDiff" and out.got == math.inf


def test_parity_order_nonfinite_cos_before_tolerance():
    assert parity({"max_abs_diff": 10.0, "cosine_sim": math.nan}).kind == "NonFiniteCosineSim"


def test_parity_order_abs_before_cos():
    assert parity({"max_abs_diff": 10.0, "cosine_sim": 0.0}).kind == "MaxAbsDiffExceedsTolerance"


def test_parity_bounds_are_inclusive():
    assert parity({"max_abs_diff": 5e-3, "cosine_sim": 0.9999}).ok
    assert parity({"max_abs_diff": math.nextafter(5e-3, 1), "cosine_sim": 1.0}).kind == "MaxAbsDiffExceedsTolerance"
    assert parity({"max_abs_diff": 0.0, "cosine_sim": math.nextafter(0.9999, 0)}).kind == "CosineSimBelowFloor"


def test_parity_custom_tolerances():
    body = {"max_abs_diff": 0.01, "cosine_sim": 0.999}
    assert not parity(body).ok
    assert parity(body, tol_abs=0.02, tol_cos=0.99).ok
    assert classify_parity_numerics(body, tol_abs=0.02, tol_cos=0.99) == P.Ok(max_abs_diff=0.01, cosine_sim=0.999)


def test_parity_defaults_are_the_seeds():
    assert classify_parity_numerics({"max_abs_diff": 0.004, "cosine_sim": 0.99995}).ok
    assert classify_parity_numerics({"max_abs_diff": 0.006, "cosine_sim": 1.0}) == P.MaxAbsDiffExceedsTolerance(
        got=0.006, tolerance=5e-3
    )


def test_provenance_order_impl_before_source():
    # flash2 with a fallback reason but no source: still KernelSourceMissing.
    assert classify_provenance({"attn_impl": "flash2", "fallback": "x"}) == V.KernelSourceMissing()
    # naive with a valid pin but no reason: the pin does not excuse a missing reason.
    body = {"attn_impl": "naive", "kernel_source": KERNEL_SOURCE_PREFIX + SHA}
    assert classify_provenance(body) == V.FallbackMissingWhenNotFlash2(attn_impl="naive")


def test_provenance_prefix_before_sha():
    assert classify_provenance({"attn_impl": "flash2", "kernel_source": ""}) == V.KernelSourceMalformed(got="")


# ---- Python's traps ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_trap_bool_is_not_a_number(value):
    assert parity({"max_abs_diff": value, "cosine_sim": 1.0}) == P.MissingMaxAbsDiff()
    assert parity({"max_abs_diff": 0.0, "cosine_sim": value}) == P.MissingCosineSim()


@pytest.mark.parametrize("value", ["0.001", None, [0.001], {"v": 0.001}])
def test_non_numbers_are_missing(value):
    assert parity({"max_abs_diff": value, "cosine_sim": 1.0}) == P.MissingMaxAbsDiff()


def test_integers_are_numbers():
    assert parity({"max_abs_diff": 0, "cosine_sim": 1}) == P.Ok(max_abs_diff=0.0, cosine_sim=1.0)
    out = parity({"max_abs_diff": 1, "cosine_sim": 1})
    assert out == P.MaxAbsDiffExceedsTolerance(got=1.0, tolerance=5e-3)
    assert type(out.got) is float


def test_huge_integer_is_infinite_not_an_exception():
    body = json.loads('{"max_abs_diff": 1' + "0" * 400 + ', "cosine_sim": 1}')
    assert parity(body) == P.NonFiniteMaxAbsDiff(got=math.inf)
    body = json.loads('{"max_abs_diff": 0, "cosine_sim": -1' + "0" * 400 + "}")
    assert parity(body) == P.NonFiniteCosineSim(got=-math.inf)


def test_json_nan_tokens_are_non_finite():
    out = parity(json.loads('{"max_abs_diff": NaN, "cosine_sim": 1.0}'))
    assert out.kind == "NonFiniteMaxAbsDiff" and math.isnan(out.got)
    assert out != out  # as Rust's PartialEq on f64: NaN fields never compare equal
    assert json.dumps(out.to_dict()) == '{"outcome": "NonFiniteMaxAbsDiff", "ok": false, "got": NaN}'


def test_negative_max_abs_diff_passes_as_in_seed():
    # The seed gates only the upper bound; a negative value is finite and <= tol.
    assert parity({"max_abs_diff": -1.0, "cosine_sim": 1.0}).ok


@pytest.mark.parametrize(
    "tail",
    [
        SHA + "\n",              # re.match(r"...$") would accept this
        SHA.upper(),             # string.hexdigits accepts upper case
        SHA[:-1] + "\u0661",     # ARABIC-INDIC DIGIT ONE: str.isdigit() is True
        SHA[:-1] + "\uff41",     # FULLWIDTH LATIN SMALL LETTER A
        SHA[:-1] + "g",
        SHA[:-1],
        SHA + "0",
        " " + SHA[:-1],
        SHA[:-1] + "\x00",
    ],
    ids=["trailing-newline", "upper-hex", "unicode-digit", "fullwidth-a", "g", "39", "41", "space", "nul"],
)
def test_trap_pin_rejects_lookalikes(tail):
    src = KERNEL_SOURCE_PREFIX + tail
    assert classify_provenance({"attn_impl": "flash2", "kernel_source": src}) == V.KernelSourceMalformed(got=src)


def test_pin_prefix_must_be_at_start_and_exact():
    for src in (" " + KERNEL_SOURCE_PREFIX + SHA, "HF-kernels-community:flash-attn2@" + SHA,
                "hf-kernels-community:flash-attn2:" + SHA):
        assert classify_provenance({"attn_impl": "flash2", "kernel_source": src}).kind == "KernelSourceMalformed"


def test_custom_kernel_source_prefix():
    body = {"attn_impl": "flash2", "kernel_source": "flashparity:flash2@" + SHA}
    assert classify_provenance(body, kernel_source_prefix="flashparity:flash2@") == V.OkFlash2(sha=SHA)
    assert classify_provenance(body, "flashparity:flash2@") == V.OkFlash2(sha=SHA)
    with pytest.raises(TypeError, match="kernel_source_prefix must be a str"):
        classify_provenance(body, kernel_source_prefix=None)


@pytest.mark.parametrize("value", [1, True, None, ["naive"]])
def test_attn_impl_must_be_a_string(value):
    assert classify_provenance({"attn_impl": value}) == V.MissingAttnImpl()


@pytest.mark.parametrize("value", [None, 0, False, [], {}])
def test_fallback_reason_must_be_a_nonempty_string(value):
    out = classify_provenance({"attn_impl": "naive", "fallback": value})
    assert out == V.FallbackMissingWhenNotFlash2(attn_impl="naive")


def test_kernel_source_must_be_a_string():
    assert classify_provenance({"attn_impl": "flash2", "kernel_source": 123}) == V.KernelSourceMissing()


def test_head_dim_substrings():
    for msg in ("unsupported-head-dim: got 300", "x head_dim y", "head-dim", "ahead-dimension"):
        assert classify_head_dim_error({"error": msg}).ok, msg
    for msg in ("", "headdim", "Head-Dim", "head dim"):
        assert classify_head_dim_error({"error": msg}).kind == "ErrorDoesNotMentionHeadDim", msg


# ---- never raises on any JSON value --------------------------------------------------------------

JSON_VALUES = [None, True, False, 0, -1, 1.5, math.nan, "", "x", [], [1, 2], {}, {"a": None},
               {"max_abs_diff": {}, "cosine_sim": []}, {"error": None, "attn_impl": {}}]


@pytest.mark.parametrize("body", JSON_VALUES, ids=[repr(v)[:30] for v in JSON_VALUES])
def test_never_raises(body):
    for fn in (classify_parity_numerics, classify_provenance, classify_head_dim_error):
        out = fn(body)
        assert isinstance(out.kind, str)
        json.dumps(out.to_dict())


def test_non_object_bodies():
    for body in (None, 1, "s", [], [{}]):
        assert parity(body) == P.NotAnObject()
        assert classify_provenance(body) == V.NotAnObject()
        assert classify_head_dim_error(body) == H.NotAnObject()


# ---- tolerances and outcome objects --------------------------------------------------------------


@pytest.mark.parametrize("tol", [math.nan, math.inf, -1e-9, -0.5])
def test_bad_tolerance_is_a_value_error(tol):
    with pytest.raises(ValueError, match="tol_abs must be a finite number >= 0"):
        classify_parity_numerics({}, tol_abs=tol)
    with pytest.raises(ValueError, match="tol_cos must be a finite number >= 0"):
        classify_parity_numerics({}, tol_cos=tol)


@pytest.mark.parametrize("tol", ["0.1", None, True])
def test_non_numeric_tolerance_is_a_type_error(tol):
    with pytest.raises(TypeError, match="tol_abs must be a number"):
        classify_parity_numerics({}, tol_abs=tol)


def test_outcomes_of_different_families_differ():
    assert P.NotAnObject() != V.NotAnObject() != H.NotAnObject()
    assert P.Ok(max_abs_diff=0.0, cosine_sim=1.0) != H.Ok(error="x")
    assert P.Ok(max_abs_diff=0.0, cosine_sim=1.0) != P.Ok(max_abs_diff=0.0, cosine_sim=0.5)


def test_outcome_object_protocol():
    out = P.MaxAbsDiffExceedsTolerance(got=0.1, tolerance=5e-3)
    assert repr(out) == "ParityNumericsOutcome.MaxAbsDiffExceedsTolerance(got=0.1, tolerance=0.005)"
    assert not out and P.Ok(max_abs_diff=0.0, cosine_sim=1.0)
    assert hash(out) == hash(P.MaxAbsDiffExceedsTolerance(0.1, 5e-3))
    with pytest.raises(AttributeError, match="immutable"):
        out.got = 0.0
    with pytest.raises(TypeError, match="missing field"):
        P.MaxAbsDiffExceedsTolerance(got=0.1)
    with pytest.raises(TypeError, match="no field"):
        P.NotAnObject(got=1)
    match out:
        case P.MaxAbsDiffExceedsTolerance(got, tol):
            assert (got, tol) == (0.1, 5e-3)
        case _:
            pytest.fail("pattern matching on an outcome failed")
