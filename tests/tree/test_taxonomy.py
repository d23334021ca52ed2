"""Taxonomy parsing, levels and matrices: hand-computed answers, every bad input, and property tests."""

from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiertree.tree.taxonomy import Taxonomy, TaxonomyError, list_builtin
from trees import _count, _number, names, trees

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_listed():
    assert "pascal_part" in list_builtin()


def test_pascal_part_levels(pascal):
    assert pascal.num_levels == 3
    assert pascal.classes(0) == ["background", "body"]
    assert pascal.classes(1) == ["background", "upper_body", "lower_body"]
    assert pascal.classes(2) == ["background", "low_hand", "torso", "low_leg", "head", "up_leg", "up_hand"]
    assert pascal.level_sizes == [2, 3, 7]


def test_pascal_part_luts(pascal):
    #               ids: 0  1  2  3  4  5  6
    assert pascal.leaf_to_class(0).tolist() == [0, 1, 1, 1, 1, 1, 1]
    assert pascal.leaf_to_class(1).tolist() == [0, 1, 1, 2, 1, 2, 1]
    assert pascal.leaf_to_class(2).tolist() == [0, 1, 2, 3, 4, 5, 6]
    lut = pascal.leaf_lut(1)
    assert lut.shape == (256,) and lut[255] == 255 and lut[3] == 2 and lut[100] == 255


def test_pascal_part_matrices(pascal):
    expected_m1 = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.float
    )
    assert torch.equal(pascal.mapping_matrix(1), expected_m1)
    assert torch.equal(pascal.parent_matrix(0), torch.tensor([[1.0, 0], [0, 1], [0, 1]]))
    assert torch.equal(pascal.parent_matrix(1), expected_m1)  # level 2 classes are the leaves
    assert pascal.parent_index(0).tolist() == [0, 1, 1]
    # mapping(l) = mapping(l+1) @ parent(l): the matrices compose along the tree
    assert torch.equal(pascal.mapping_matrix(2) @ pascal.parent_matrix(1) @ pascal.parent_matrix(0), pascal.mapping_matrix(0))
    with pytest.raises(IndexError):
        pascal.parent_matrix(2)


def test_to_levels_keeps_ignore(pascal):
    mask = torch.tensor([[0, 1, 255], [3, 5, 6]])
    l0, l1, l2 = pascal.to_levels(mask)
    assert l0.tolist() == [[0, 1, 255], [1, 1, 1]]
    assert l1.tolist() == [[0, 1, 255], [2, 2, 1]]
    assert l2.tolist() == [[0, 1, 255], [3, 5, 6]]
    with pytest.raises(ValueError, match=r"label values 10 \(1 px\), 11 \(2 px\) are not in taxonomy.*inner node ids 7..9"):
        pascal.to_levels(torch.tensor([[10, 11, 11]]))


def test_four_level_unbalanced_example():
    t = Taxonomy.from_yaml(ROOT / "examples" / "figures_4level.yaml")
    assert t.num_levels == 4 and t.num_leaves == 11
    assert t.classes(0) == ["background", "person", "object"]
    assert t.classes(1) == ["background", "head", "trunk", "ball", "block"]
    assert t.classes(2) == ["background", "head", "torso", "arm", "leg", "ball", "block"]
    assert t.classes(3) == ["background", "head", "torso", "upper_arm", "forearm", "hand", "thigh", "shin", "foot", "ball", "block"]
    assert t.leaf_to_class(2).tolist() == [0, 1, 2, 3, 3, 3, 4, 4, 4, 5, 6]
    assert t.parent_index(1).tolist() == [0, 1, 2, 2, 2, 3, 4]
    assert t.colors(0).tolist()[1] == [220, 120, 60]


def test_round_trip_and_leaf_form(pascal):
    assert Taxonomy.from_yaml(pascal.to_yaml()) == pascal
    t = Taxonomy.from_yaml("tree:\n  bg: {id: 0, color: [1, 2, 3]}\n  fg: {a: 1, b: 2}\n")
    assert t.colors(0).tolist()[0] == [1, 2, 3]
    assert t.classes(1) == ["bg", "a", "b"]


def test_equality_follows_sibling_order():
    # swapping inner siblings permutes the coarse class indices: not the same taxonomy (a resume must refuse it)
    a = Taxonomy.from_yaml("tree: {bg: 0, body: {x: 1, y: 2}, thing: {z: 3}}")
    b = Taxonomy.from_yaml("tree: {bg: 0, thing: {z: 3}, body: {x: 1, y: 2}}")
    assert a.classes(0) == ["bg", "body", "thing"] and b.classes(0) == ["bg", "thing", "body"]
    assert a != b
    assert a == Taxonomy.from_yaml(a.to_yaml()) and hash(a) == hash(Taxonomy.from_yaml(a.to_yaml()))


def test_single_level_tree():
    t = Taxonomy.from_yaml("tree: {bg: 0, cat: 1}")
    assert t.num_levels == 1 and t.classes(0) == ["bg", "cat"]


BAD = [
    ("tree: {a: 0, b: {a: 1}}", r"duplicate class name 'a'"),
    ("tree: {a: 0, a: 1}", r"duplicate key 'a'"),
    ("tree: {a: 0, b: 0}", r"duplicate id 0"),
    ("tree: {a: 0, b: -1}", r"negative"),
    ("tree: {a: 0, b: 1.5}", r"must be an integer"),
    ("tree: {a: 0, b: 'x'}", r"must be an integer"),
    ("tree: {a: 0, b: true}", r"must be an integer"),
    ("tree: {a: 0, b: 2}", r"contiguous.*missing \[1\]"),
    ("tree: {a: 0, b: {id: 1, c: 2}}", r"key 'tree.b'.*inner node cannot have an id"),
    ("tree: {a: 0, b: }", r"key 'tree.b'.*leaf has no id"),
    ("tree: {a: 0, b: {color: [1, 2, 3]}}", r"leaf has no id"),
    ("tree: {}", r"empty branch"),
    ("tree: {a: 0, b: {}}", r"key 'tree.b'.*empty branch"),
    ("ignore_index: 1\ntree: {a: 0, b: 1}", r"ignore_index 1 collides.*'b'"),
    ("ignore_index: x\ntree: {a: 0}", r"ignore_index"),
    ("ignore_index: -1\ntree: {a: 0, b: 1}", r"'ignore_index' must be a non-negative integer.*got -1"),
    ("tree: [a, b]", r"expected a mapping"),
    ("trees: {a: 0}", r"unknown top-level key 'trees'.*did you mean 'tree'"),
    ("name: x", r"missing the 'tree' key"),
    ("tree: {a: 0, b: 1}\ncolors: {c: [1, 2, 3]}", r"colors.c"),
    ("tree: {a: 0, b: 1}\ncolors: {a: [1, 2]}", r"\[r, g, b\]"),
    ("tree: {a: 0, 5: 1}", r"non-empty strings"),
    ("tree: &x {a: 0, b: *x}", r"cycle|duplicate"),
    ("tree: {a: 0\n  b: [", r"not valid YAML"),
    ("- just\n- a list", r"expected a mapping"),
]


@pytest.mark.parametrize("text,match", BAD)
def test_bad_taxonomies_have_clear_errors(text, match):
    with pytest.raises(TaxonomyError, match=match):
        Taxonomy.from_yaml(text + ("\n" if "\n" not in text else ""))


def test_errors_name_the_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("tree: {a: 0, b: 0}\n")
    with pytest.raises(TaxonomyError, match="mine.yaml"):
        Taxonomy.from_yaml(f)
    with pytest.raises(TaxonomyError, match="does not exist"):
        Taxonomy.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(TaxonomyError, match="no built-in taxonomy 'pascal_prt'.*did you mean 'pascal_part'"):
        Taxonomy.builtin("pascal_prt")


# ---------------------------------------------------------------- property tests
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.randoms(use_true_random=False))
def test_random_trees_are_consistent(shape, rnd):
    ids = list(range(_count(shape)))
    rnd.shuffle(ids)
    t = Taxonomy.from_dict({"tree": _number(shape, ids)})
    leaves = torch.arange(t.num_leaves)
    # the deepest level is the leaves themselves, by id
    assert t.leaf_to_class(-1).tolist() == list(range(t.num_leaves))
    for level in range(t.num_levels):
        m = t.mapping_matrix(level)
        assert m.shape == (t.num_leaves, t.num_classes(level))
        assert torch.equal(m.sum(1), torch.ones(t.num_leaves))  # each leaf has exactly one ancestor
        assert torch.all(m.sum(0) >= 1)  # every class holds at least one leaf
        if level + 1 < t.num_levels:
            p = t.parent_matrix(level)
            assert torch.equal(t.mapping_matrix(level + 1) @ p, m)
    levels = t.to_levels(leaves)
    for level in range(t.num_levels):
        assert torch.equal(levels[level], t.leaf_to_class(level))
    assert Taxonomy.from_yaml(t.to_yaml()) == t


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_fuzzed_text_never_raw_traceback(text):
    try:
        Taxonomy.from_yaml("tree:\n" + text + "\n")
    except TaxonomyError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.integers(-3, 12) | st.floats(allow_nan=False) | st.booleans() | names,
                    lambda c: st.dictionaries(names, c, max_size=4) | st.lists(c, max_size=3), max_leaves=12))
def test_fuzzed_structures_never_raw_traceback(tree):
    try:
        Taxonomy.from_yaml(yaml.safe_dump({"tree": tree}))
    except TaxonomyError:
        pass


# ---------------------------------------------------------------------- exclude_from_miou, children, padding
INNER_EXCLUDED = """\
name: garden
tree:
  void: 0
  animal:
    cat: 1
    dog: 2
  plant: 3
exclude_from_miou: [animal, void]
"""


def test_exclude_from_miou_names_an_inner_node():
    t = Taxonomy.from_yaml_text(INNER_EXCLUDED)
    assert t.exclude_from_miou == ("void", "animal")  # tree order, whatever the YAML order
    assert t.classes(0) == ["void", "animal", "plant"]
    assert t.miou_mask(0).tolist() == [False, False, True]
    assert t.classes(1) == ["void", "cat", "dog", "plant"]
    assert t.miou_mask(1).tolist() == [False, True, True, True]  # animal is no class at L1: its leaves count
    assert t.miou_mask(1).dtype == torch.bool
    assert t.to_dict()["exclude_from_miou"] == ["void", "animal"]
    back = Taxonomy.from_yaml(t.to_yaml())
    assert back == t and hash(back) == hash(t) and back.exclude_from_miou == t.exclude_from_miou
    plain = Taxonomy.from_yaml_text(INNER_EXCLUDED.replace("exclude_from_miou: [animal, void]\n", ""))
    assert plain.exclude_from_miou == () and plain != t  # no top-level background leaf: nothing by default


def test_exclude_from_miou_empty_list_names_none():
    text = "tree:\n  background: 0\n  thing: {a: 1, b: 2}\nexclude_from_miou: []\n"
    t = Taxonomy.from_yaml_text(text)
    assert t.exclude_from_miou == ()
    assert all(t.miou_mask(l).all() for l in range(t.num_levels))
    assert t.to_dict()["exclude_from_miou"] == []  # differs from the default, so it is written out
    assert Taxonomy.from_yaml(t.to_yaml()) == t
    assert t != Taxonomy.from_yaml_text(text.replace("exclude_from_miou: []\n", ""))


def test_exclude_from_miou_default_detection(pascal):
    assert pascal.exclude_from_miou == ("background",)
    assert [pascal.miou_mask(l).tolist() for l in range(3)] == [[False, True], [False, True, True], [False] + [True] * 6]
    assert "exclude_from_miou" not in pascal.to_dict()  # the default is not written: stored files stay the same
    explicit = Taxonomy.from_dict({**pascal.to_dict(), "exclude_from_miou": ["background"]})
    assert explicit == pascal and hash(explicit) == hash(pascal) and "exclude_from_miou" not in explicit.to_dict()
    nested = Taxonomy.from_yaml_text("tree:\n  stuff: {background: 0, a: 1}\n  b: 2\n")
    assert nested.exclude_from_miou == ()  # a `background` leaf that is not top-level is scored
    inner = Taxonomy.from_yaml_text("tree:\n  background: {sky: 0, ground: 1}\n  b: 2\n")
    assert inner.exclude_from_miou == ()  # nor is an inner node of that name
    none = Taxonomy.from_yaml_text("tree: {void: 0, a: 1}")
    assert none.exclude_from_miou == () and none.miou_mask(0).tolist() == [True, True]


def test_exclude_from_miou_bad_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("tree:\n  background: 0\n  body: {arm: 1, leg: 2}\nexclude_from_miou: [backgrund]\n")
    with pytest.raises(TaxonomyError) as err:
        Taxonomy.from_yaml(path)
    msg = str(err.value)
    assert msg == f"{path}: key 'exclude_from_miou': no class named 'backgrund' (did you mean 'background'?)"
    assert "\n" not in msg
    for value, match in (("background", "expected a list of class names"), ("[arm, arm]", "more than once"),
                         ("[1]", "expected a list of class names")):
        with pytest.raises(TaxonomyError, match=match):
            Taxonomy.from_yaml_text(f"tree: {{background: 0, body: {{arm: 1, leg: 2}}}}\nexclude_from_miou: {value}\n")
    with pytest.raises(TaxonomyError, match="did you mean 'exclude_from_miou'"):
        Taxonomy.from_yaml_text("tree: {a: 0, b: 1}\nexclude_from_mIoU: [a]\n")


def _lists(groups):
    return [g.tolist() for g in groups]


def test_children_pascal_part(pascal):
    # L0: background, body; L1: background, upper_body, lower_body
    # L2 (leaf ids): 0 background, 1 low_hand, 2 torso, 3 low_leg, 4 head, 5 up_leg, 6 up_hand
    assert _lists(pascal.children(0)) == [[0], [1, 2]]
    assert _lists(pascal.children(1)) == [[0], [1, 2, 4, 6], [3, 5]]
    assert _lists(pascal.children(0, 2)) == [[0], [1, 2, 3, 4, 5, 6]]
    assert all(g.dtype == torch.long for g in pascal.children(1))
    pascal.children(1)[1].zero_()  # callers get copies of the cached groups
    assert _lists(pascal.children(1)) == [[0], [1, 2, 4, 6], [3, 5]]
    with pytest.raises(IndexError):
        pascal.children(2)
    with pytest.raises(IndexError):
        pascal.children(1, 0)


def test_children_figures_4level():
    t = Taxonomy.from_yaml(ROOT / "examples" / "figures_4level.yaml")
    # L0: background, person, object; L1: background, head, trunk, ball, block
    # L2: background, head, torso, arm, leg, ball, block
    # L3: background, head, torso, upper_arm, forearm, hand, thigh, shin, foot, ball, block (= leaf ids)
    assert _lists(t.children(0)) == [[0], [1, 2], [3, 4]]
    assert _lists(t.children(1)) == [[0], [1], [2, 3, 4], [5], [6]]
    assert _lists(t.children(2)) == [[0], [1], [2], [3, 4, 5], [6, 7, 8], [9], [10]]
    assert _lists(t.children(0, 3)) == [[0], [1, 2, 3, 4, 5, 6, 7, 8], [9, 10]]
    assert _lists(t.children(1, 3)) == [[0], [1], [2, 3, 4, 5, 6, 7, 8], [9], [10]]
    for l in range(t.num_levels - 1):  # the same groups as the parent matrix and the parent index
        pm = t.parent_matrix(l)
        assert _lists(t.children(l)) == [torch.nonzero(pm[:, c]).flatten().tolist() for c in range(pm.shape[1])]
        assert torch.equal(t.parent_index(l), pm.argmax(1))


def test_padding_helper_values():
    from hiertree.images import pad_amount, padded_size

    assert [pad_amount(s, 8) for s in (0, 1, 7, 8, 9, 16, 17)] == [0, 7, 1, 0, 7, 0, 7]
    assert [pad_amount(s, 1) for s in (0, 1, 5)] == [0, 0, 0]
    assert pad_amount(45, 16) == 3 and pad_amount(71, 32) == 25
    assert padded_size(45, 71, 16) == (48, 80)
    assert padded_size(96, 80, 32) == (96, 96)
    assert padded_size(5, 3, 1) == (5, 3)
    assert int(pad_amount(torch.tensor(45), 16)) == 3  # the traced (ONNX) form: a 0-d tensor
