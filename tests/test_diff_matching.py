"""Pairing tensor names: exact, wrapper prefixes, --rename rules and --map files."""

from __future__ import annotations

import pytest

from ckptkit.core.errors import CkptkitError, UsageError
from ckptkit.diffing.matching import Pair, RenameRule, load_map, match_names, strip_wrappers


def test_exact_names_pair_and_leftovers_are_reported_in_order():
    m = match_names(["x", "a", "y"], ["y", "b", "x"])
    assert m.pairs == [Pair("x", "x", "exact"), Pair("y", "y", "exact")]
    assert (m.only_a, m.only_b) == (["a"], ["b"])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("module.fc.weight", "fc.weight"),
        ("_orig_mod.fc.weight", "fc.weight"),
        ("module._orig_mod.fc.weight", "model.fc.weight"),
        ("state_dict.encoder.0.bias", "encoder.0.bias"),
    ],
)
def test_wrapper_prefixes_are_ignored(a, b):
    assert match_names([a], [b]).pairs == [Pair(a, b, "prefix")]


def test_prefix_matching_never_guesses_between_two_candidates():
    m = match_names(["module.w", "w2"], ["w", "model.w"])
    assert m.pairs == []  # "w" and "model.w" both strip to "w": ambiguous
    assert strip_wrappers("model.") == "model."  # a bare prefix is a name of its own


def test_exact_match_wins_over_prefix_match():
    m = match_names(["model.w", "w"], ["w"])
    assert m.pairs == [Pair("w", "w", "exact")]
    assert m.only_a == ["model.w"]


def test_rename_rules_apply_to_both_sides():
    rules = [RenameRule.parse(r"transformer\.h\.(\d+)=layers.\1"), RenameRule.parse(r"\.c_attn\.=.qkv.")]
    m = match_names(["transformer.h.0.c_attn.weight", "wte"], ["layers.0.qkv.weight", "wte"], rules)
    assert m.pairs == [
        Pair("transformer.h.0.c_attn.weight", "layers.0.qkv.weight", "rename"),
        Pair("wte", "wte", "exact"),
    ]


@pytest.mark.parametrize("text", ["no-equals-sign", "=x", "([unclosed=x", r"a=\9"])
def test_bad_rename_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--rename"):
        RenameRule.parse(text)


def test_rename_that_merges_two_names_is_refused():
    with pytest.raises(UsageError, match="same name 'w'"):
        match_names(["w1", "w2"], ["w"], [RenameRule.parse(r"\d=")])


def test_map_file_json_and_lines(tmp_path):
    js = tmp_path / "map.json"
    js.write_text('{"enc.w": "encoder.weight"}')
    lines = tmp_path / "map.txt"
    lines.write_text("# A name   B name\n\nenc.w   encoder.weight\n")
    for path in (js, lines):
        mapping = load_map(path)
        m = match_names(["enc.w", "b"], ["encoder.weight", "b"], mapping=mapping)
        assert m.pairs == [Pair("enc.w", "encoder.weight", "map"), Pair("b", "b", "exact")]


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ('{"a": 1}', "map names to names"), ("a b c\n", "line 1")],
)
def test_bad_map_file(tmp_path, content, message):
    path = tmp_path / "map"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_map(path)


def test_unreadable_map_file_names_the_file(tmp_path):
    with pytest.raises(CkptkitError, match="cannot read the --map file") as err:
        load_map(tmp_path / "missing.txt")
    assert err.value.path == str(tmp_path / "missing.txt")


def test_map_naming_unknown_tensors_is_refused():
    with pytest.raises(UsageError, match="not a tensor of the first"):
        match_names(["a"], ["b"], mapping={"zz": "b"})
    with pytest.raises(UsageError, match="not a tensor of the second"):
        match_names(["a"], ["b"], mapping={"a": "zz"})
