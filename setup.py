"""Metadata lives in pyproject.toml; this file only maps the repository's ``pretrained/`` folder (the shipped
models) into wheels as the ``hiertree.pretrained`` package, which ``hiertree.checkpoint.shipped_models`` reads."""
from pathlib import Path

from setuptools import find_packages, setup

_SHIPPED = [p.name for p in sorted(Path(__file__).resolve().parent.joinpath("pretrained").glob("*"))
            if (p / "model.safetensors").is_file()]

setup(
    packages=find_packages(include=["hiertree*"]) + ["hiertree.pretrained"] + [f"hiertree.pretrained.{n}" for n in _SHIPPED],
    package_dir={"hiertree.pretrained": "pretrained"},
    package_data={"hiertree.pretrained": ["*.md"], **{f"hiertree.pretrained.{n}": ["*"] for n in _SHIPPED}},
)
