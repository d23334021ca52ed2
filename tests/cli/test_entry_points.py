"""Every console script as a user types it: declared in pyproject, installed as an entry point, answering --help,
failing on a missing file with one ``hiertree-<name>: error:`` line and the same exit status, and documented."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor

import pytest

from hiertree.cli.common import EXIT_INPUT
from tests.tiny import ROOT

SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _entry_point(name: str) -> importlib.metadata.EntryPoint:
    found = importlib.metadata.entry_points(group="console_scripts", name=name)
    assert found, f"{name} is in pyproject's [project.scripts] but not installed: reinstall with pip install -e ."
    return next(iter(found))


def test_pyproject_declares_the_nine_commands():
    assert set(SCRIPTS) == {"hiertree-train", "hiertree-eval", "hiertree-stats", "hiertree-predict", "hiertree-export",
                            "hiertree-publish", "hiertree-convert-weights", "hiertree-demo", "hiertree-review"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_loads_and_answers_help(name, capsys):
    ep = _entry_point(name)
    assert ep.value == SCRIPTS[name], f"installed {ep.value!r}, pyproject says {SCRIPTS[name]!r}: reinstall"
    main = ep.load()  # an ImportError here is what a user's shell would show
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {name} ")


def test_installed_scripts_answer_help_as_typed():
    """The files pip wrote into the environment's bin folder, run as a shell runs them."""
    missing = [n for n in SCRIPTS if shutil.which(n, path=str(ROOT.parent) + ":" + _bin()) is None]
    assert not missing, f"not on PATH: {missing}"

    def run(name):
        return name, subprocess.run([shutil.which(name, path=_bin()), "--help"], capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        for name, proc in pool.map(run, sorted(SCRIPTS)):
            assert proc.returncode == 0, f"{name} --help exited {proc.returncode}: {proc.stderr[-500:]}"
            assert proc.stdout.startswith(f"usage: {name} ")


def _bin() -> str:
    import sysconfig

    return sysconfig.get_path("scripts")


def _missing_file_args(tmp_path) -> dict[str, list[str]]:
    gone = tmp_path / "does-not-exist"
    blocker = tmp_path / "does-not-exist-as-a-folder"  # a file where convert-weights needs its output folder
    blocker.write_text("")
    return {
        "hiertree-train": ["--config", f"{gone}.yaml"],
        "hiertree-eval": ["--checkpoint", str(gone)],
        "hiertree-stats": ["--config", f"{gone}.yaml"],
        "hiertree-predict": ["--checkpoint", str(gone), str(gone / "photo.jpg"), "--out", str(tmp_path / "out")],
        "hiertree-export": ["--checkpoint", str(gone), "--onnx", str(tmp_path / "m.onnx")],
        "hiertree-publish": ["--checkpoint", str(gone), "--out", str(tmp_path / "published")],
        "hiertree-convert-weights": ["lite0", "--out", str(blocker / "lite0.safetensors")],
        "hiertree-demo": ["--checkpoint", str(gone), "--port", "0"],
        "hiertree-review": ["--checkpoint", str(gone), "--out", str(tmp_path / "review")],
    }


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_command_on_a_missing_file_says_so_in_one_line(name, tmp_path, capsys):
    args = _missing_file_args(tmp_path)
    assert set(args) == set(SCRIPTS), "a new console script needs its missing-file case here"
    code = _entry_point(name).load()(args[name])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_INPUT, (code, err)
    assert err.startswith(f"{name}: error: ") and "\n" not in err and "Traceback" not in err, err
    assert "does-not-exist" in err, err


def _documented_commands(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w.-])(hiertree-[a-z]+(?:-[a-z]+)*)", text))


def test_docs_name_only_commands_that_exist():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        unknown = _documented_commands(page.read_text()) - set(SCRIPTS)
        assert not unknown, f"{page.name} names {sorted(unknown)}, which pyproject does not install"


def test_readme_command_table_lists_every_script():
    text = (ROOT / "README.md").read_text()
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(hiertree-[a-z-]+)`", table, flags=re.M))
    assert listed == set(SCRIPTS), f"README's command table lists {sorted(listed)}; pyproject has {sorted(SCRIPTS)}"


def test_python_m_runs_the_same_main():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: hiertree-train ")
