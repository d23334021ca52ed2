"""``hiertree-demo``'s one-line errors (no extra, no checkpoint, a port in use) and the Space's ``app.py``: the same
app on any run folder, its maps those of ``model.predict``."""

from __future__ import annotations

import base64
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from hiertree.cli.common import EXIT_INPUT
from hiertree.images import read_image

ROOT = Path(__file__).resolve().parents[2]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiertree-demo: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_without_the_extra_it_names_the_extra_and_the_pip_command():
    """Run as a user without FastAPI would (the module blocked in a fresh interpreter)."""
    code = "import sys; sys.modules['fastapi'] = None; from hiertree.cli.demo import main; sys.exit(main([]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert proc.stderr.strip() == ("hiertree-demo: error: the demo page needs the 'demo' extra (fastapi not installed); "
                                   "install it with: pip install 'hiertree[demo]' (or pip install -e '.[demo]' in a clone)")


def test_a_missing_checkpoint_is_one_line(demo_extra, tmp_path, capsys):
    from hiertree.cli.demo import main

    assert main(["--checkpoint", str(tmp_path / "does-not-exist"), "--port", "0"]) == EXIT_INPUT
    assert "does-not-exist" in _one_error_line(capsys)


def test_a_port_in_use_is_one_line_before_the_model_loads(demo_extra, capsys):
    from hiertree.cli.demo import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--checkpoint", "never-loaded"]) == EXIT_INPUT
    assert f"cannot listen on 127.0.0.1:{port}" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, words", [(["--port", "70000"], "--port must be in 0..65535"),
                                         (["--max-side", "10"], "--max-side must be 0")])
def test_bad_options_are_one_line(argv, words, capsys):
    from hiertree.cli.demo import main

    assert main(argv) == EXIT_INPUT
    assert words in _one_error_line(capsys)


def test_the_space_app_serves_any_run_folder(demo_extra, tiny_checkpoint, monkeypatch):
    """examples/space/app.py as a Space runs it, on a run folder without a calibration: a threshold, no promise."""
    from starlette.testclient import TestClient

    from hiertree.app.render import DEFAULT_THRESHOLD
    from hiertree.models import load_model

    monkeypatch.setenv("HIERTREE_CHECKPOINT", str(tiny_checkpoint))
    app = runpy.run_path(str(ROOT / "examples" / "space" / "app.py"), run_name="space_app")["app"]
    photo = ROOT / "docs" / "images" / "demo-examples" / "astronaut.jpg"
    with TestClient(app) as client:
        info = client.get("/api/info").json()
        assert info["backoff"]["calibrated"] is False and "eval.py --calibrate-backoff" in info["backoff"]["why"]
        assert info["backoff"]["threshold"] == DEFAULT_THRESHOLD and info["backoff"]["ladder"] == []
        out = client.post("/api/predict", files={"image": ("astronaut.jpg", photo.read_bytes())}).json()
    model, _ = load_model(tiny_checkpoint)
    pred = model.predict(read_image(photo), backoff=DEFAULT_THRESHOLD)
    for got, expected in [*zip([v["labels"] for v in out["levels"]], pred["levels"]), (out["nodes"]["labels"], pred["nodes"])]:
        decoded = cv2.imdecode(np.frombuffer(base64.b64decode(got.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(decoded, expected)
