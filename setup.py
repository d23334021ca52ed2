"""Metadata lives in pyproject.toml; this file owns what goes into the wheel: the ``hiertree`` packages, their data
(bundled taxonomies, the preset configs that the repository's ``configs/`` links to, the demo page and its example
photos) and the repository's ``pretrained/`` folder (the shipped models) as the ``hiertree.pretrained`` package, which
``hiertree.checkpoint.shipped_models`` reads. (A ``[tool.setuptools]`` packages table in pyproject would override
this and drop the shipped models: tests/cli/test_installed_wheel.py checks the installed wheel.)"""
from pathlib import Path

from setuptools import find_packages, setup

_SHIPPED = [p.name for p in sorted(Path(__file__).resolve().parent.joinpath("pretrained").glob("*"))
            if (p / "model.safetensors").is_file()]

setup(
    packages=find_packages(include=["hiertree*"]) + ["hiertree.pretrained"] + [f"hiertree.pretrained.{n}" for n in _SHIPPED],
    package_dir={"hiertree.pretrained": "pretrained"},
    package_data={"hiertree.tree.taxonomies": ["*.yaml"], "hiertree.config": ["presets/*.yaml", "label_maps/*.yaml"],
                  "hiertree.app": ["page.html"],
                  "hiertree.pretrained": ["*.md"], **{f"hiertree.pretrained.{n}": ["*"] for n in _SHIPPED}},
)
