import pytest

from quantgate.errors import QuantgateError
from quantgate.recipes import GPTQ, QAT, DynamicInt8, Recipe, StaticInt8, WeightOnly


@pytest.mark.parametrize("r", [DynamicInt8(), DynamicInt8(backend="pt2e", exclude=("classifier*",)),
                               StaticInt8(num_samples=64), StaticInt8(calibrator="entropy", per_channel_weights=False),
                               WeightOnly(bits=4, group_size=64), WeightOnly(bits=8), QAT(weight_bits=4, steps=10)])
def test_round_trip_json_yaml_and_file(r, tmp_path):
    assert Recipe.from_dict(r.to_dict()) == r
    for ext, text in ((".json", r.to_json()), (".yaml", r.to_yaml())):
        p = tmp_path / f"r{ext}"
        p.write_text(text)
        assert Recipe.load(p) == r


@pytest.mark.parametrize("kwargs,message", [
    ({"bits": 5}, "bits must be one of 2, 3, 4, 8, got 5"),
    ({"bits": 4, "group_size": 0}, "group_size must be a positive integer or null"),
    ({"bits": 4, "group_size": 20}, "group_size must be a multiple of 8"),
])
def test_invalid_weight_only_recipe(kwargs, message):
    with pytest.raises(QuantgateError, match=message):
        WeightOnly(**kwargs)


def test_invalid_values_from_a_file_are_one_clear_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("method: weight-only\nbits: 5\n")
    with pytest.raises(QuantgateError, match="bits must be one of 2, 3, 4, 8, got 5"):
        Recipe.load(p)
    p.write_text("method: weight-only\nbitz: 4\n")
    with pytest.raises(QuantgateError, match=r"unknown field\(s\) \['bitz'\]"):
        Recipe.load(p)
    p.write_text("method: magic\n")
    with pytest.raises(QuantgateError, match="recipe method must be one of dynamic-int8, gptq, nf4, qat, qlora, static-int8, weight-only"):
        Recipe.load(p)
    with pytest.raises(QuantgateError, match="calibrator must be one of"):
        StaticInt8(calibrator="vibes")


def test_parse_short_specs():
    assert Recipe.parse("dynamic") == DynamicInt8()
    assert Recipe.parse("static") == StaticInt8()
    assert Recipe.parse("int4-g64") == WeightOnly(bits=4, group_size=64)
    assert Recipe.parse("int8").name == "woq-int8"
    assert Recipe.parse("static-mse") == StaticInt8(calibrator="mse")
    assert Recipe.parse("qat-w4a8").name == "qat-w4a8"
    with pytest.raises(QuantgateError, match="weight_bits must be one of 4, 8, got 3"):
        QAT(weight_bits=3)
    with pytest.raises(QuantgateError, match="unknown recipe 'fp6'"):
        Recipe.parse("fp6")
    assert Recipe.parse("int3-g64-asym") == WeightOnly(bits=3, group_size=64, symmetric=False)
    with pytest.raises(QuantgateError, match="bits must be one of 2, 3, 4, 8, got 6"):
        Recipe.parse("int6-g64")
    # language-model recipes: the name round-trips through parse
    for spec in ("gptq-int4-g128", "gptq-int3-g64-noact", "gptq-int2-g128-asym", "gptq-int4-g64-nosearch-head8",
                 "nf4-b64-dq", "qlora-r8"):
        r = Recipe.parse(spec.replace("nf4-b64-dq", "nf4").replace("qlora-r8", "qlora"))
        assert r.name == spec and Recipe.from_dict(r.to_dict()) == r
    assert Recipe.parse("gptq").act_order and Recipe.parse("gptq").damp == 0.05 and Recipe.parse("gptq").scale_search
    assert not Recipe.parse("gptq-int4-nosearch").scale_search
    with pytest.raises(QuantgateError, match="scale_search must be true or false, got 'yes'"):
        GPTQ(scale_search="yes")
    for spec in ("woq-int4-g64-search", "woq-int3-g128-asym-search-head8", "woq-int8"):   # round-to-nearest, too
        r = Recipe.parse(spec)
        assert r.name == spec and Recipe.from_dict(r.to_dict()) == r
    assert Recipe.parse("int4-g64-search").scale_search and not Recipe.parse("int4-g64").scale_search
    with pytest.raises(QuantgateError, match="scale_search must be true or false, got 1"):
        WeightOnly(bits=4, scale_search=1)
    with pytest.raises(QuantgateError, match="cannot parse 'x9' in 'gptq-int4-x9'"):
        Recipe.parse("gptq-int4-x9")
