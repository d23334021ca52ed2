"""The demo page: drop in a photo, see its label map at every level of the tree and what back-off does.

Served by ``hiertree-demo`` (or a Space's ``app.py``, docs/demo.md). It runs the public predictor only
(``HierSegModel.from_pretrained`` and ``model.predict``, the one ``hiertree-predict`` uses) and asks the Taxonomy for
every name and colour. :mod:`.upload` turns uploaded bytes into an RGB photo (or one clear message),
:mod:`.render` turns a prediction into overlays, legends and the calibrated ladder of back-off promises, and
:mod:`.server` is the web app (FastAPI, the optional ``demo`` extra) around them.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA", "EXTRA_PACKAGES", "require_extra"]

#: The optional extra that brings the web server (the base install stays lean without it).
EXTRA = "demo"
#: What it installs, as modules: the web framework, the server that runs it, and its form parser (file uploads).
EXTRA_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}


def require_extra() -> None:
    """Raise ImportError naming the extra and the pip command when a package of the ``demo`` extra is missing."""
    missing = [dist for module, dist in EXTRA_PACKAGES.items() if _absent(module)]
    if missing:
        raise ImportError(f"the demo page needs the '{EXTRA}' extra ({', '.join(missing)} not installed); install it "
                          f"with: pip install 'hiertree[{EXTRA}]' (or pip install -e '.[{EXTRA}]' in a clone)")


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
        return True
