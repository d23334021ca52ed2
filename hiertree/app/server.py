"""The demo page as a web app (FastAPI, from the optional ``demo`` extra): the page, its JSON API and the bundled
example photos. ``hiertree-demo`` serves it with uvicorn; a Space's ``app.py`` builds the same app with
:func:`create_app` (docs/demo.md).

API (what the page itself calls; JSON, errors as ``{"error": "..."}`` with a 4xx status, never a dead server):

- ``GET /api/info``: the model, the Taxonomy's legend per level and per node, the back-off ladder, the examples;
- ``POST /api/predict``: a multipart form with the photo as ``image`` and optionally ``threshold`` (a number in
  [0, 1], or ``auto``): overlays and lossless label maps per level, the node map, notes and timings;
- ``GET /api/examples/<name>.jpg``: a bundled example photo; ``GET /api/health``: ``{"ok": true}``.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from hiertree.app import require_extra
from hiertree.app.render import Demo, load_demo, parse_threshold, render, taxonomy_legend
from hiertree.app.upload import MAX_BYTES, MIN_SIDE, Photo, UploadError, decode_upload

require_extra()  # one line naming the extra, before FastAPI's own ImportError

from fastapi import FastAPI, File, Form, UploadFile  # noqa: E402
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse  # noqa: E402

__all__ = ["create_app", "load_demo", "warm_up", "bind", "serve", "EXAMPLES"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: Where the example photos live: a checkout's docs (images stay out of the package; a wheel's page offers uploads only)
EXAMPLE_DIR = HERE.parents[1] / "docs" / "images" / "demo-examples"
#: The example photos (``<name>.jpg``, from scikit-image's data, public domain or CC0), those present.
EXAMPLES = {
    "astronaut": "Eileen Collins, NASA astronaut (public domain)",
    "camera": "a photographer, grayscale (CC0, Lav Varshney)",
    "chelsea": "Chelsea the cat: no person at all (CC0, Stefan van der Walt)",
}
EXAMPLES = {name: title for name, title in EXAMPLES.items() if (EXAMPLE_DIR / f"{name}.jpg").is_file()}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _info(demo: Demo) -> dict[str, Any]:
    return {"model": {"name": demo.name, "checkpoint": str(getattr(demo.model, "checkpoint_dir", "") or "")},
            "taxonomy": taxonomy_legend(demo.taxonomy), "backoff": demo.backoff,
            "examples": [{"name": n, "title": t, "url": f"/api/examples/{n}.jpg"} for n, t in EXAMPLES.items()],
            "limits": {"max_side": demo.max_side, "min_side": MIN_SIDE, "max_bytes": MAX_BYTES}}


def _predict(demo: Demo, image: UploadFile | None, threshold: str | None) -> JSONResponse:
    """One upload through :func:`~hiertree.app.upload.decode_upload` and :func:`~hiertree.app.render.render`."""
    start = time.perf_counter()
    if image is None:
        return _error(400, "no photo in the request: send it as the multipart form field 'image'")
    name = Path(image.filename or "upload").name
    try:
        theta = parse_threshold(threshold, demo)
        photo = decode_upload(image.file.read(MAX_BYTES + 1), name, demo.max_side)
    except (UploadError, ValueError) as err:
        return _error(400, str(err))
    decoded = time.perf_counter()
    try:
        out = render(demo, photo, theta, name)
    except Exception as err:  # the page says so and the server keeps serving
        log.exception("%s: prediction failed", name)
        return _error(500, f"{name}: the prediction failed ({type(err).__name__}: {err}); the server is still "
                      "running: try another photo, and see its log for the traceback")
    out["timings_ms"] = {"decode": round(1000 * (decoded - start), 1), **out["timings_ms"],
                         "total": round(1000 * (time.perf_counter() - start), 1)}
    return JSONResponse(out)


def create_app(demo: Demo) -> FastAPI:
    """The web app serving ``demo``: the page at ``/`` and the API above."""
    app = FastAPI(title=f"hiertree demo: {demo.name}", docs_url=None, redoc_url=None, openapi_url=None)
    page = (HERE / "page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return _info(demo)

    @app.get("/api/examples/{filename}", response_model=None)
    def example(filename: str) -> FileResponse | JSONResponse:
        stem = filename.removesuffix(".jpg")
        if stem not in EXAMPLES:
            return _error(404, f"no example {filename!r}; the examples: {', '.join(f'{n}.jpg' for n in EXAMPLES)}")
        return FileResponse(EXAMPLE_DIR / f"{stem}.jpg", media_type="image/jpeg")

    @app.post("/api/predict", response_model=None)
    def predict(image: UploadFile | None = File(None), threshold: str | None = Form(None)) -> JSONResponse:
        return _predict(demo, image, threshold)

    return app


def warm_up(demo: Demo) -> float:
    """Predict the first example once (a first prediction exports and caches the ONNX graph); returns seconds."""
    start = time.perf_counter()
    first = next(iter(EXAMPLES), None)
    photo = (decode_upload((EXAMPLE_DIR / f"{first}.jpg").read_bytes(), f"{first}.jpg", demo.max_side) if first
             else Photo(np.full((256, 256, 3), 128, np.uint8), (256, 256)))  # an installed wheel: no examples
    render(demo, photo, parse_threshold(None, demo), f"{first or 'gray'} (warm-up)")
    return time.perf_counter() - start


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port); an OSError says what to change."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port (0: any free "
                      "one) or --host") from None
    return sock


def serve(app: FastAPI, sock: socket.socket, log_level: str = "warning") -> None:
    """Run ``app`` on the bound ``sock`` with uvicorn until interrupted (Ctrl+C, SIGTERM)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False)).run(sockets=[sock])
