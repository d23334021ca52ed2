"""The procedural figures dataset: reproducible, role-complete, exactly mapped."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pytest

from hiertree.data import DataError, SyntheticFigures, role_map_from_names
from hiertree.data.layouts.synthetic import FIGURE_ROLES, ROLES

PASCAL_ROLES = {
    "background": "background", "head": "head", "torso": "torso", "upper_arm": "up_hand",
    "forearm": "low_hand", "hand": "low_hand", "thigh": "up_leg", "shin": "low_leg", "foot": "low_leg",
    "ball": "background", "block": "background",
}


@pytest.fixture(scope="module")
def twenty():
    ds = SyntheticFigures(20, 96, seed=11)
    return [ds.render(i) for i in range(20)]


def test_same_seed_and_index_give_identical_bytes():
    a = SyntheticFigures(8, 64, seed=3)
    b = SyntheticFigures(3, 64, seed=3)  # length does not change an image
    for i in range(3):
        ia, ma = a[i]
        ib, mb = b[i]
        assert ia.tobytes() == ib.tobytes() and ma.tobytes() == mb.tobytes()
    assert a[5][0].tobytes() == a[5][0].tobytes()
    assert a[-1][0].tobytes() == a[7][0].tobytes()


def test_different_seeds_and_indices_differ():
    a, b = SyntheticFigures(4, 64, seed=0), SyntheticFigures(4, 64, seed=1)
    for i in range(4):
        assert not np.array_equal(a[i][0], b[i][0])
    assert not np.array_equal(a[0][0], a[1][0])


def test_shapes_dtypes_and_non_square_size():
    image, mask = SyntheticFigures(2, (96, 64), seed=0)[1]
    assert image.shape == (96, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 64) and mask.dtype == np.uint8


def test_default_mask_values_are_role_indices(twenty):
    image, roles = twenty[0]
    ds = SyntheticFigures(20, 96, seed=11)
    assert np.array_equal(ds[0][1], roles)  # no mapping: value == index in ROLES
    assert roles.max() < len(ROLES)


def test_every_role_appears_across_twenty_images(twenty):
    seen = set()
    for _, roles in twenty:
        seen.update(np.unique(roles).tolist())
    assert seen == set(range(len(ROLES))), [ROLES[r] for r in set(range(len(ROLES))) - seen]


def test_figures_occupy_a_sensible_share(twenty):
    figure_ids = [ROLES.index(r) for r in FIGURE_ROLES]
    shares = np.array([np.isin(roles, figure_ids).mean() for _, roles in twenty])
    assert 0.05 < shares.mean() < 0.45
    assert (shares > 0.01).sum() >= 18  # a figure may be mostly cropped or hidden now and then
    assert shares.max() < 0.8


def test_parts_have_plausible_relative_sizes(twenty):
    counts = np.zeros(len(ROLES))
    for _, roles in twenty:
        counts += np.bincount(roles.ravel(), minlength=len(ROLES))
    r = {name: counts[i] for i, name in enumerate(ROLES)}
    assert r["torso"] > r["head"] > r["hand"]
    assert r["thigh"] > r["foot"] and r["upper_arm"] > r["hand"]


def test_mapped_mask_is_the_role_mask_through_the_map(pascal, twenty):
    mapping = role_map_from_names(pascal, PASCAL_ROLES)
    ds = SyntheticFigures(20, 96, seed=11, role_to_leaf=mapping)
    for i in range(5):
        _, mask = ds[i]
        roles = twenty[i][1]
        expected = np.array([mapping[name] for name in ROLES], dtype=np.uint8)[roles]
        assert np.array_equal(mask, expected)
        assert set(np.unique(mask)) <= set(range(pascal.num_leaves))


def test_unmapped_roles_take_the_background_id():
    ds = SyntheticFigures(10, 64, seed=2, role_to_leaf={"background": 7, "head": 3})
    values = set()
    for i in range(10):
        values.update(np.unique(ds[i][1]).tolist())
    assert values == {3, 7}


def test_role_map_from_names_gives_leaf_ids(pascal):
    mapping = role_map_from_names(pascal, PASCAL_ROLES)
    ids = {name: i for i, name in enumerate(pascal.leaf_names)}
    assert mapping["forearm"] == ids["low_hand"] == 1
    assert mapping["upper_arm"] == 6 and mapping["thigh"] == 5 and mapping["block"] == 0


@pytest.mark.parametrize(
    "names, fragments",
    [
        ({"background": "background", "forarm": "low_hand"}, ["'forarm'", "did you mean 'forearm'"]),
        ({"background": "background", "head": "haed"}, ["'haed'", "did you mean 'head'", "'head'"]),
        ({"background": "background", "torso": "upper_body"}, ["'upper_body'", "inner class"]),
        ({"head": "head"}, ["'background' is not mapped"]),
    ],
)
def test_role_map_errors_name_the_problem(pascal, names, fragments):
    with pytest.raises(DataError) as err:
        role_map_from_names(pascal, names)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"role_to_leaf": {"background": 0, "hed": 1}}, "did you mean 'head'"),
        ({"role_to_leaf": {"background": -1}}, "0..255"),
        ({"role_to_leaf": {"head": 1}}, "'background' must be mapped"),
        ({"size": 8}, "size"),
        ({"num_images": 0}, "num_images"),
    ],
)
def test_constructor_errors(kwargs, fragment):
    args = {"num_images": 4, **kwargs}
    with pytest.raises(DataError) as err:
        SyntheticFigures(**args)
    assert fragment in str(err.value)


def test_index_out_of_range():
    with pytest.raises(IndexError, match="3 images"):
        SyntheticFigures(3, 32)[3]
