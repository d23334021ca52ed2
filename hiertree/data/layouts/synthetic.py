"""Procedural images of stick-and-blob human figures with exact part masks; no files needed.

Every image is drawn from ``np.random.default_rng([seed, index])``, so an image depends only on
``(seed, index)``: two datasets with different seeds (train / val) never share an image, and any
index can be regenerated alone. Shapes are drawn without anti-aliasing into the image and into a
role mask with the same OpenCV call, back to front, so the mask is exactly what is visible.
The roles are generic body parts; which taxonomy leaf a role becomes is the caller's choice
(``role_to_leaf``), normally set from a config through :func:`role_map_from_names`.
"""

from __future__ import annotations

import colorsys
import functools
import math
from typing import TYPE_CHECKING, Mapping, Sequence

import cv2
import numpy as np

from hiertree.config.options import SyntheticOptions, check_args, defaults, suggest
from hiertree.data.errors import DataError
from hiertree.data.layouts.registry import LAYOUTS
from hiertree.data.sources import Relabelled, Source

if TYPE_CHECKING:
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["ROLES", "FIGURE_ROLES", "SyntheticFigures", "role_map_from_names", "open_synthetic"]

ROLES: tuple[str, ...] = (
    "background", "head", "torso", "upper_arm", "forearm", "hand", "thigh", "shin", "foot", "ball", "block",
)
FIGURE_ROLES: tuple[str, ...] = ROLES[1:9]
_RID = {name: i for i, name in enumerate(ROLES)}
_SYN = defaults(SyntheticOptions)  # the declared data.synthetic.* defaults
_SHIFT = 2  # OpenCV fixed-point bits: coordinates in quarter pixels
_ONE = 1 << _SHIFT

_TROUSERS = np.array([[50, 70, 120], [30, 30, 35], [170, 150, 110], [110, 110, 115], [60, 80, 60], [120, 40, 40]], np.float64)
_SHOES = np.array([[25, 25, 25], [90, 60, 35], [225, 225, 225], [60, 60, 70]], np.float64)
_HAIR = np.array([[20, 15, 10], [70, 45, 25], [150, 110, 60], [200, 170, 110], [140, 140, 140]], np.float64)


def role_map_from_names(taxonomy: "Taxonomy", names: Mapping[str, str]) -> dict[str, int]:
    """Turn ``{role: leaf_name}`` (as written in a config) into ``{role: leaf_id}`` for ``taxonomy``.

    Roles left out get the leaf of ``background`` later, so ``background`` itself must be named.
    """
    if not isinstance(names, Mapping):
        raise DataError(f"synthetic roles must map role names to leaf names, got {type(names).__name__}")
    leaves = taxonomy.leaf_names
    out: dict[str, int] = {}
    for role, leaf in names.items():
        if role not in _RID:
            raise DataError(
                f"synthetic roles: unknown role {role!r}{suggest(role, ROLES)}; roles are {', '.join(ROLES)}"
            )
        if not isinstance(leaf, str):
            raise DataError(f"synthetic roles: key {role!r}: expected a leaf name, got {leaf!r}")
        if leaf not in leaves:
            kind = "an inner class, not a leaf" if leaf in taxonomy.graph else "not a class"
            raise DataError(
                f"synthetic roles: key {role!r}: {leaf!r} is {kind} of taxonomy {taxonomy.name!r}"
                f"{suggest(leaf, leaves)}; leaves are {', '.join(leaves)}"
            )
        out[role] = leaves.index(leaf)
    if "background" not in out:
        raise DataError(
            "synthetic roles: 'background' is not mapped; every unmapped role falls back to it, "
            f"so map it to a leaf of taxonomy {taxonomy.name!r} (e.g. background: {leaves[0]})"
        )
    return out


def _lut(role_to_leaf: Mapping[str, int] | None) -> np.ndarray:
    if role_to_leaf is None:
        return np.arange(len(ROLES), dtype=np.uint8)
    for role, leaf in role_to_leaf.items():
        if role not in _RID:
            raise DataError(f"role_to_leaf: unknown role {role!r}{suggest(role, ROLES)}; roles are {', '.join(ROLES)}")
        if isinstance(leaf, bool) or not isinstance(leaf, (int, np.integer)) or not 0 <= leaf <= 255:
            raise DataError(f"role_to_leaf: key {role!r}: a leaf id is an integer 0..255, got {leaf!r}")
    if "background" not in role_to_leaf:
        raise DataError("role_to_leaf: 'background' must be mapped; unmapped roles take its leaf id")
    lut = np.full(len(ROLES), role_to_leaf["background"], dtype=np.uint8)
    for role, leaf in role_to_leaf.items():
        lut[_RID[role]] = leaf
    return lut


# ---------------------------------------------------------------------- colours
def _jitter(rng: np.random.Generator, color: np.ndarray, amount: float) -> tuple[float, float, float]:
    c = np.clip(color + rng.uniform(-amount, amount, 3), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _skin(rng: np.random.Generator) -> tuple[float, float, float]:
    t = rng.random()
    light, dark = np.array([236.0, 200.0, 172.0]), np.array([92.0, 58.0, 40.0])
    return _jitter(rng, light + t * (dark - light), 12)


def _vivid(rng: np.random.Generator) -> tuple[float, float, float]:
    h, s, v = rng.random(), rng.uniform(0.15, 0.95), rng.uniform(0.25, 0.95)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (r * 255.0, g * 255.0, b * 255.0)


def _pick(rng: np.random.Generator, palette: np.ndarray, amount: float) -> tuple[float, float, float]:
    return _jitter(rng, palette[rng.integers(len(palette))], amount)


# ---------------------------------------------------------------------- shapes
# An op is (kind, role id, colour, geometry); geometry is in pixels (floats).
def _fx(v: float) -> int:
    return int(round(v * _ONE))


def _draw(img: np.ndarray, roles: np.ndarray, op: tuple) -> None:
    kind, rid, color, geo = op
    for target, value in ((img, color), (roles, rid)):
        if kind == "line":
            (x0, y0), (x1, y1), thick = geo
            cv2.line(target, (_fx(x0), _fx(y0)), (_fx(x1), _fx(y1)), value, max(1, int(round(thick))), cv2.LINE_8, _SHIFT)
        elif kind == "ellipse":
            (cx, cy), (ax, ay), angle, a0, a1 = geo
            cv2.ellipse(target, (_fx(cx), _fx(cy)), (max(1, _fx(ax)), max(1, _fx(ay))), angle, a0, a1, value, -1, cv2.LINE_8, _SHIFT)
        else:  # convex polygon, points [N, 2]
            cv2.fillConvexPoly(target, np.round(geo * _ONE).astype(np.int32), value, cv2.LINE_8, _SHIFT)


def _limb(px, fh: float, tilt: float, start, a_up: float, a_low: float, lengths, thick, colors, roles, end_role: str,
          end_axes, facing: float) -> list[tuple]:
    """Draw ops of one arm or leg (two segments and a hand or foot); ``px`` maps figure units to pixels."""
    d1 = np.array([math.sin(a_up), math.cos(a_up)])
    d2 = np.array([math.sin(a_low), math.cos(a_low)])
    joint = np.asarray(start) + lengths[0] * d1
    tip = joint + lengths[1] * d2
    ops = [
        ("line", _RID[roles[0]], colors[0], (px(start), px(joint), thick[0] * fh)),
        ("line", _RID[roles[1]], colors[1], (px(joint), px(tip), thick[1] * fh)),
    ]
    if end_role == "hand":
        center, angle = tip + 0.02 * d2, a_low
    else:  # foot: points to the side the figure faces, under the ankle
        center, angle = tip + np.array([0.03 * facing, 0.012]), 0.0
    # cv2 angles run from +x towards +y (down); the hand's long axis follows the forearm
    deg = (90.0 - math.degrees(angle) if end_role == "hand" else 0.0) + math.degrees(tilt)
    ops.append(("ellipse", _RID[end_role], colors[2], (px(center), (end_axes[0] * fh, end_axes[1] * fh), deg, 0, 360)))
    return ops


def _figure(rng: np.random.Generator, h: int, w: int, scale: tuple[float, float] = (0.4, 1.0)) -> list[tuple]:
    """Draw ops for one person, back to front; local units are the figure height."""
    fh = rng.uniform(*scale) * h
    top = rng.uniform(-0.2 * fh, h - 0.55 * fh)
    hip = np.array([rng.uniform(-0.1, 1.1) * w, top + 0.5 * fh])
    tilt = rng.normal(0.0, 0.12)
    rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    build = rng.uniform(0.85, 1.2)

    def px(p) -> np.ndarray:  # local (x, y) with hips at (0, 0.5) -> image pixels
        return hip + rot @ ((np.asarray(p, dtype=np.float64) - (0.0, 0.5)) * fh)

    skin, shirt, trousers = _skin(rng), _vivid(rng), _pick(rng, _TROUSERS, 25)
    if rng.random() < 0.3:
        trousers = _vivid(rng)
    shoes, hair = _pick(rng, _SHOES, 15), _pick(rng, _HAIR, 15)
    sleeve = skin if rng.random() < 0.5 else shirt  # short or long sleeves
    shin_color = skin if rng.random() < 0.25 else trousers  # shorts

    facing = 1.0 if rng.random() < 0.5 else -1.0
    limb = functools.partial(_limb, px, fh, tilt)
    arms, legs = [], []
    for side in (-1.0, 1.0):
        a = side * rng.uniform(-0.3, 2.5)
        bend = rng.uniform(-0.4, 2.0) * (1.0 if rng.random() < 0.5 else -1.0)
        arms.append(limb((side * (0.1 * build), 0.18), a, a + bend, (0.165, 0.15), (0.055 * build, 0.045 * build),
                         (shirt, sleeve, skin), ("upper_arm", "forearm"), "hand", (0.032, 0.026), facing))
        a = side * rng.uniform(-0.12, 0.55)
        knee = rng.uniform(-1.0, 1.0) * 0.6
        legs.append(limb((side * 0.05 * build, 0.5), a, a + knee, (0.24, 0.22), (0.085 * build, 0.065 * build),
                         (trousers, shin_color, shoes), ("thigh", "shin"), "foot", (0.05, 0.024), facing))
    torso_pts = np.array([(-0.12, 0.15), (0.12, 0.15), (0.1, 0.33), (0.1, 0.53), (-0.1, 0.53), (-0.1, 0.33)])
    torso_pts[:, 0] *= build
    torso = ("poly", _RID["torso"], shirt, np.stack([px(p) for p in torso_pts]))
    head_axes = (0.052 * rng.uniform(0.9, 1.1) * fh, 0.075 * fh)
    head = [("ellipse", _RID["head"], skin, (px((0.0, 0.075)), head_axes, math.degrees(tilt), 0, 360))]
    if rng.random() < 0.85:  # hair: upper half of a slightly larger ellipse, still the head
        head.append(("ellipse", _RID["head"], hair,
                     (px((0.0, 0.06)), (head_axes[0] * 1.08, head_axes[1] * 0.8), math.degrees(tilt), 180, 360)))
    back, front = (0, 1) if rng.random() < 0.5 else (1, 0)
    ops = legs[back] + legs[front]
    arms_behind = [arms[back]] if rng.random() < 0.7 else []
    arms_front = [a for a in (arms[back], arms[front]) if all(a is not b for b in arms_behind)]
    for arm in arms_behind:
        ops += arm
    ops += [torso] + head
    for arm in arms_front:
        ops += arm
    return ops


def _clutter(rng: np.random.Generator, h: int, w: int, role: str) -> tuple:
    """One labelled object (``ball`` / ``block``) or, with role ``background``, an unlabelled distractor."""
    s = min(h, w)
    r = rng.random()
    color = _skin(rng) if r < 0.2 else (_vivid(rng) if r < 0.6 else _pick(rng, _TROUSERS, 30))
    cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
    if role == "ball" or (role == "background" and rng.random() < 0.3):
        rad = rng.uniform(0.03, 0.14) * s
        return ("ellipse", _RID[role], color, ((cx, cy), (rad, rad), 0.0, 0, 360))
    if role == "background" and rng.random() < 0.5:
        ang = rng.uniform(0, math.pi)
        half = rng.uniform(0.1, 0.5) * s
        d = np.array([math.cos(ang), math.sin(ang)]) * half
        return ("line", _RID[role], color, (np.array([cx, cy]) - d, np.array([cx, cy]) + d, rng.uniform(1, 0.05 * s)))
    box = ((cx, cy), (rng.uniform(0.05, 0.3) * s, rng.uniform(0.05, 0.3) * s), rng.uniform(0, 180))
    return ("poly", _RID[role], color, cv2.boxPoints(box).astype(np.float64))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth two-colour field, optional floor, fine texture; float32 HxWx3."""
    c0, c1 = rng.uniform(30, 230, 3).astype(np.float32), rng.uniform(30, 230, 3).astype(np.float32)
    blend = cv2.resize(rng.random((4, 4, 1), dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    img = c0 + blend * (c1 - c0)
    if rng.random() < 0.6:
        horizon = int(rng.uniform(0.35, 0.85) * h)
        img[horizon:] = img[horizon:] * 0.4 + rng.uniform(30, 200, 3).astype(np.float32) * 0.6
    tex = rng.standard_normal((max(1, h // 4), max(1, w // 4), 1), dtype=np.float32)
    img += cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)[..., None] * rng.uniform(3, 15)
    return img


class SyntheticFigures:
    """``num_images`` procedural images of 1-3 people among clutter: ``(image RGB uint8 HxWx3, mask uint8 HxW)``.

    ``size`` is an int (square) or ``(height, width)``. ``role_to_leaf`` maps role names
    (:data:`ROLES`) to mask values; unmapped roles take the value of ``background``. Without it each
    role's value is its index in :data:`ROLES`.
    """

    def __init__(
        self,
        num_images: int,
        size: int | tuple[int, int] = _SYN["size"],
        seed: int = _SYN["seed"],
        role_to_leaf: Mapping[str, int] | None = None,
        figures: tuple[int, int] = tuple(_SYN["figures"]),
        figure_scale: tuple[float, float] = tuple(_SYN["figure_scale"]),
        clutter: bool = _SYN["clutter"],
    ) -> None:
        checked = check_args(SyntheticOptions, "SyntheticFigures", error=DataError, names={"num_train": "num_images"},
                             num_train=num_images, size=size, seed=seed, figures=figures, figure_scale=figure_scale)
        h, w = (size, size) if isinstance(size, int) else tuple(checked["size"])
        self.figures, self.figure_scale = tuple(checked["figures"]), tuple(checked["figure_scale"])
        self.clutter = bool(clutter)
        self.num_images, self.height, self.width, self.seed = num_images, h, w, seed
        self.role_to_leaf = None if role_to_leaf is None else dict(role_to_leaf)
        self._lut = _lut(role_to_leaf)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"SyntheticFigures has {self.num_images} images, asked for index {index}")
        image, roles = self.render(index % self.num_images)
        return image, self._lut[roles]

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and ROLE mask (values index :data:`ROLES`) of image ``index``."""
        rng = np.random.default_rng([self.seed, index])
        h, w = self.height, self.width
        canvas = _background(rng, h, w)
        roles = np.zeros((h, w), dtype=np.uint8)
        for _ in range(rng.integers(2, 7) if self.clutter else 0):  # unlabelled distractors, part of the background
            _draw(canvas, roles, _clutter(rng, h, w, "background"))
        objects = [_figure(rng, h, w, self.figure_scale) for _ in range(rng.integers(self.figures[0], self.figures[1] + 1))]
        n_objects = rng.integers(0, 4) if self.clutter else 0
        objects += [[_clutter(rng, h, w, "ball" if rng.random() < 0.5 else "block")] for _ in range(n_objects)]
        for k in np.argsort(rng.random(len(objects)), kind="stable"):
            for op in objects[k]:
                _draw(canvas, roles, op)
        return _finish(rng, canvas), roles


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Global brightness, a light gradient, mild blur and sensor noise; back to uint8."""
    h, w = img.shape[:2]
    ang = rng.uniform(0, 2 * math.pi)
    ramp = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * math.cos(ang) + (
        np.arange(h, dtype=np.float32)[:, None] / h - 0.5
    ) * math.sin(ang)
    img *= (rng.uniform(0.65, 1.25) * (1.0 + rng.uniform(0.0, 0.5) * ramp))[..., None]
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 1.0))
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(1.0, 7.0)
    return np.clip(img, 0, 255).astype(np.uint8)


@LAYOUTS.register("synthetic")
def open_synthetic(src: "Source", taxonomy: "Taxonomy") -> tuple[Sequence, Sequence]:
    """``data.kind: synthetic``: figures drawn from ``data.synthetic`` (val from seed + 1: never a training image),
    their leaf-id masks through the source's label map when it has one."""
    syn = src.synthetic
    if syn["roles"] is None:
        raise DataError(
            "config key 'data.synthetic.roles' is missing: map each synthetic role "
            f"({', '.join(ROLES)}) to a leaf name of taxonomy {taxonomy.name!r}; unmapped roles become background"
        )
    roles = role_map_from_names(taxonomy, syn["roles"])
    size = syn["size"] if isinstance(syn["size"], int) else tuple(syn["size"])
    look = dict(figures=tuple(syn["figures"]), figure_scale=tuple(syn["figure_scale"]), clutter=bool(syn["clutter"]))
    train = SyntheticFigures(syn["num_train"], size, syn["seed"], roles, **look)
    val = SyntheticFigures(syn["num_val"], size, syn["seed"] + 1, roles, **look)
    if src.labels.is_identity:
        return train, val
    return Relabelled(train, src.labels, src.name), Relabelled(val, src.labels, src.name)
