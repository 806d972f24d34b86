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
    with pytest.raises(QuantgateError, match="recipe method must be one of dynamic-int8, gptq, half, nf4, qat, qlora, static-int8, weight-only"):
        Recipe.load(p)
    with pytest.raises(QuantgateError, match="calibrator must be one of"):
        StaticInt8(calibrator="vibes")


def test_parse_short_specs():
    assert Recipe.parse("dynamic") == DynamicInt8()
    assert Recipe.parse("static") == StaticInt8()
    assert Recipe.parse("int4-g64") == WeightOnly(bits=4, group_size=64)
    assert Recipe.parse("int8").name == "int8"
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
                 "nf4", "nf4-b128-nodq", "qlora", "qlora-r16-merged"):
        r = Recipe.parse(spec)
        assert r.name == spec and Recipe.from_dict(r.to_dict()) == r
    assert Recipe.parse("gptq").act_order and Recipe.parse("gptq").damp == 0.05 and Recipe.parse("gptq").scale_search
    assert not Recipe.parse("gptq-int4-nosearch").scale_search
    with pytest.raises(QuantgateError, match="scale_search must be true or false, got 'yes'"):
        GPTQ(scale_search="yes")
    for spec in ("int4-g64-search", "int3-g128-asym-search-head8", "int8"):   # round-to-nearest, too
        r = Recipe.parse(spec)
        assert r.name == spec and Recipe.from_dict(r.to_dict()) == r
    assert Recipe.parse("int4-g64-search").scale_search and not Recipe.parse("int4-g64").scale_search
    with pytest.raises(QuantgateError, match="scale_search must be true or false, got 1"):
        WeightOnly(bits=4, scale_search=1)
    with pytest.raises(QuantgateError, match="cannot parse 'x9' in 'gptq-int4-x9'"):
        Recipe.parse("gptq-int4-x9")


def test_one_name_per_recipe_what_the_user_typed():
    """The name a report, a registry version and the gate show is the short spec the user typed
    (older spellings still parse, to the same recipe and name)."""
    for spec in ("dynamic", "static", "static-percentile-pertensor", "int8", "int4-g128", "int4-g64-asym-search",
                 "gptq-int4-g128", "nf4", "qlora", "qat", "qat-w4a8", "dynamic-torch.ao"):
        assert Recipe.parse(spec).name == spec
    for old, new in (("woq-int4-g128", "int4-g128"), ("nf4-b64-dq", "nf4"), ("static-int8", "static"),
                     ("dynamic-int8", "dynamic"), ("qat-w8a8", "qat")):
        assert Recipe.parse(old).name == new
    with pytest.raises(QuantgateError, match=r"expected nf4\[-b<N>\]\[-nodq\]"):
        Recipe.parse("nf4-b64-fast")


def test_help_of_every_sub_command_lists_its_recipes(capsys):
    from quantgate.cli import main
    for argv, must, must_not in ((["lm", "compare"], ["gptq[-int<b>]", "[-noact]", "[-nosearch]", "[-head<h>[g<N>]]", "nf4[-b<N>]",
                                                      "--task", "--runtime", "--recipes"], ["--registry"]),
                                 (["lm", "quantize"], ["gptq[-int<b>]", "--registry", "--overwrite"], ["--task "]),
                                 (["lm", "generate"], ["--prompt", "--runtime"], ["--recipes"]),
                                 (["compare"], ["static[-<calibrator>]", "qat-w4a8", "int<b>[-g<N>]"], ["gptq"]),
                                 (["quantize"], ["static[-<calibrator>]", "--recipe"], ["nf4"])):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and out.startswith(f"usage: quantgate {' '.join(argv)} ")
        for m in must:
            assert m in out, f"{argv}: {m!r} missing from its help"
        for m in must_not:
            assert m not in out, f"{argv}: {m!r} does not belong in its help"
