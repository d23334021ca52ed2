"""One real ``hiertree-demo`` for the page's tests: the command in a subprocess on a free loopback port (``--port 0``:
the OS picks one, the command prints it), the shipped model, started once per session and stopped at the end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "images" / "demo-examples"
SHIPPED = "pascal_part_lite0_cpu"


def _skip_without_extra() -> None:
    for module in ("fastapi", "uvicorn", "multipart", "httpx"):
        pytest.importorskip(module, reason=f"{module} is in the demo and test extras: pip install -e '.[test]'")


@pytest.fixture
def demo_extra() -> None:
    """Skips a test, with the reason, where the demo extra (or httpx, from the test extra) is not installed."""
    _skip_without_extra()


class Server:
    """A running ``hiertree-demo`` subprocess: its URL and every line it printed so far."""

    def __init__(self, args: list[str], timeout: float = 180.0) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "hiertree.cli.demo", "--host", "127.0.0.1", "--port", "0",
                                      *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("hiertree-demo did not start:\n" + "".join(self.lines[-30:]))

    def _read(self) -> None:
        for line in self.proc.stdout:  # drained all along, so the server never blocks on a full pipe
            self.lines.append(line)
            found = re.search(r"serving .* at (http://127\.0\.0\.1:\d+/)", line)
            if found:
                self.url = found.group(1)
                self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def demo_server():
    """The shipped model's page, warmed up (one prediction made, the ONNX graph cached)."""
    _skip_without_extra()
    server = Server(["--checkpoint", SHIPPED])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shipped_model():
    """The same model loaded in this process, for ``model.predict`` on the same images."""
    from hiertree.models import HierSegModel

    return HierSegModel.from_pretrained(SHIPPED)


@pytest.fixture(scope="session")
def astronaut() -> Path:
    """A real photo (Eileen Collins, NASA, public domain), as the page bundles it."""
    return EXAMPLES / "astronaut.jpg"


@pytest.fixture(scope="session")
def thresholds() -> tuple[float, float]:
    """The shipped model's calibrated threshold (promise P 0.75) and its ladder's stricter one for P 0.8, read from
    the model so that a re-calibrated model needs no test edits."""
    from hiertree.checkpoint import shipped_model

    calibration = json.loads((shipped_model(SHIPPED) / "backoff.json").read_text())
    return calibration["threshold"], next(r["threshold"] for r in calibration["ladder"] if r["target"] == 0.8)
