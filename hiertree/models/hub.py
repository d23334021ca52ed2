"""Hugging Face Hub conventions for hiertree models, built on ``huggingface_hub``'s own primitives.

A saved model is a folder in the layout the Hub uses: ``model.safetensors``, ``config.json`` (the model section and
the taxonomy, everything needed to rebuild the network) and ``README.md``, a model card whose YAML front matter
(``library_name: hiertree``, ``license``, ``pipeline_tag: image-segmentation``, ``tags``, ``datasets``,
``metrics`` and a ``model-index`` with the mIoU of every level) the Hub reads (:class:`huggingface_hub.ModelCard`).
Such a folder loads from disk, and a repo id (``"org/name"``) loads through :func:`huggingface_hub.snapshot_download`:
from the Hub, or from the local Hub cache alone with ``HF_HUB_OFFLINE=1``. Checkpoint folders written by
``hiertree-train`` (``config.yaml`` + ``taxonomy.yaml``) and the shipped models keep loading as before
(:func:`hiertree.checkpoint.read_checkpoint` reads both layouts).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, snapshot_download
from safetensors.torch import save_file

from hiertree.checkpoint import CONFIG_JSON, CheckpointError, shipped_model
from hiertree.tree.taxonomy import Taxonomy
from hiertree.version import __version__

__all__ = ["save_pretrained", "push_to_hub", "resolve_pretrained", "card_data", "with_front_matter", "is_repo_id"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: what a hiertree model repo holds (a snapshot download fetches these and nothing else)
_FILES = ["model.safetensors", "config.json", "config.yaml", "taxonomy.yaml", "README.md", "metrics.json", "backoff.json",
          "int8_calibration.json"]


def is_repo_id(name: str) -> bool:
    """``org/name`` as the Hub spells repo ids (a relative path that does not exist on disk looks the same)."""
    return bool(_REPO_ID.match(str(name)))


def resolve_pretrained(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path | str:
    """A local folder for ``name_or_path``: a checkpoint, run or shipped model as it is, a Hub repo id through
    :func:`huggingface_hub.snapshot_download` (the local cache only under ``HF_HUB_OFFLINE=1``)."""
    path = Path(name_or_path)
    if path.exists() or shipped_model(str(name_or_path)) is not None or not is_repo_id(str(name_or_path)):
        return name_or_path  # read_checkpoint says what is wrong with a path that is neither
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, cache_dir=cache_dir, allow_patterns=_FILES))
    except Exception as err:  # offline without a cached copy, an unknown repo, no network
        raise CheckpointError(
            f"{name_or_path!r} is no local folder or shipped model, and as a Hub repo id it could not be fetched "
            f"({type(err).__name__}: {err}); with HF_HUB_OFFLINE=1 only repos already in the Hub cache load"
        ) from None


def card_data(taxonomy: Taxonomy, metrics: dict | None = None, *, model_name: str = "hiertree model",
              license: str = "mit", datasets: Sequence[str] = (), dataset_name: str | None = None,
              tags: Sequence[str] = (), **extra: Any) -> ModelCardData:
    """The card's front matter: library, licence, task, tags, datasets and a model-index with each level's mIoU
    (without background, ``metrics`` as evaluation writes them); ``extra``: other front-matter keys
    (``license_name``, ``base_model``, ...)."""
    results = []
    for lv in (metrics or {}).get("tree", {}).get("levels", []):
        results.append(EvalResult(
            task_type="image-segmentation", dataset_type=(list(datasets) or ["custom"])[0],
            dataset_name=dataset_name or (list(datasets) or ["custom"])[0], dataset_split=metrics.get("split", "val"),
            metric_type="mean_iou", metric_value=round(float(lv["mIoU"]), 4),
            metric_name=f"mIoU L{lv['level']} ({len(lv['classes'])} classes, background not averaged)"))
    return ModelCardData(
        library_name="hiertree", license=license, pipeline_tag="image-segmentation",
        tags=["hiertree", "semantic-segmentation", "hierarchical-segmentation", f"taxonomy:{taxonomy.name}", *tags],
        datasets=list(datasets) or None, metrics=["mean_iou"], model_name=model_name,
        eval_results=results or None, **extra)


def with_front_matter(body: str, data: ModelCardData) -> str:
    """``body`` (Markdown, any front matter it had replaced) under ``data`` as YAML front matter."""
    text = body
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        text = text[end + 5:] if end >= 0 else text
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{text.lstrip()}"))


def _default_card(model: torch.nn.Module, metrics: dict | None) -> str:
    cfg = model.config
    lines = [f"# {model.taxonomy.name}: hiertree model", "",
             f"Tree-consistent semantic segmentation on the `{model.taxonomy.name}` taxonomy, one head per level, "
             f"`{cfg['encoder']}` encoder, output stride {cfg['output_stride']}.", "", "```", model.taxonomy.describe(), "```", ""]
    if metrics:
        lines += ["| level | mIoU | mIoU with background |", "| --- | --- | --- |"]
        lines += [f"| L{lv['level']} | {lv['mIoU']:.4f} | {lv['mIoU_with_background']:.4f} |" for lv in metrics["tree"]["levels"]]
        lines.append("")
    lines += ["```python", "from hiertree import HierSegModel", "model = HierSegModel.from_pretrained(\"<this folder or repo id>\")",
              "out = model.predict(rgb_uint8_image)", "```", ""]
    return "\n".join(lines)


def save_pretrained(model: torch.nn.Module, save_directory: str | Path, *, metrics: dict | None = None,
                    card: str | None = None, dtype: torch.dtype | None = None, **card_options: Any) -> Path:
    """Write ``model`` (a :class:`~hiertree.models.HierSegModel`) in the Hub layout; returns the folder.

    ``metrics``: an evaluation result (``eval.py``'s JSON) for the card's model-index; ``card``: the card's Markdown
    body (default: a short generated one); ``dtype``: e.g. ``torch.float16`` halves the file; ``card_options``:
    :func:`card_data`'s keywords (``license``, ``datasets``, ``dataset_name``, ``tags``, ``model_name``).
    """
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {"library_name": "hiertree", "hiertree_version": __version__,
              "model": {**model.config, "encoder_weights": None}, "taxonomy": model.taxonomy.to_dict()}
    (out / CONFIG_JSON).write_text(json.dumps(config, indent=2))
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    data = card_data(model.taxonomy, metrics, **card_options)
    (out / "README.md").write_text(with_front_matter(card if card is not None else _default_card(model, metrics), data))
    return out


def push_to_hub(model: torch.nn.Module, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload hiertree model", **save_options: Any) -> str:
    """Save ``model`` as :func:`save_pretrained` does and upload the folder to the Hub repo ``repo_id`` (created if
    missing); returns the commit URL. Needs network access and a token (``huggingface-cli login``)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, **save_options)
        return str(api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message))
