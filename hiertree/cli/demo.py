"""The ``hiertree-demo`` command: a page on this machine to drop a photo on and see every level and what back-off does.

The page and its API are :mod:`hiertree.app` (FastAPI and uvicorn, the optional ``demo`` extra); this command loads
the model, predicts once so the first visitor does not wait for the ONNX graph, binds the port and serves.
"""

from __future__ import annotations

import argparse
import sys

from hiertree.cli.common import fail
from hiertree.logs import add_verbosity, logging_from_args

__all__ = ["main"]

PROG = "hiertree-demo"
DEFAULT_CHECKPOINT = "pascal_part_lite0_cpu"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, metavar="NAME_OR_DIR",
                        help="a shipped model's name, a checkpoint, run (uses its best) or save_pretrained folder, or a "
                             f"Hub repo id already in the local cache (default {DEFAULT_CHECKPOINT}, shipped with hiertree)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860; 0: any free port)")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="photos whose longer side exceeds this are shrunk for the page, which says so (default "
                             "1024; 0: never)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available; on a CPU ONNX Runtime runs the "
                        "network), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="serve at once instead of predicting one example first (the first photo then waits for the "
                             "ONNX graph to be exported and cached, about 10 s on a 2-core CPU)")
    add_verbosity(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve a page to drop a photo on (or pick an example) and see its overlay per level side by side, the legend from
    the taxonomy, and the back-off node map under a promise chosen from the calibrated ladder (or a threshold)."""
    args = _parser().parse_args(argv)
    logging_from_args(args)
    try:
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
        if args.max_side < 0 or 0 < args.max_side < 64:
            raise ValueError(f"--max-side must be 0 (never shrink) or at least 64, got {args.max_side}")
        from hiertree.app import require_extra

        require_extra()
        from hiertree.app import server
        from hiertree.checkpoint import CheckpointError
        from hiertree.device import DeviceError, resolve_device
        from hiertree.inference.backends import BackendError
    except (ImportError, ValueError) as err:
        return fail(PROG, err)
    sock = None
    try:
        device = resolve_device(args.device, flag="--device")
        sock = server.bind(args.host, args.port)  # a port in use fails before the model loads; visitors queue meanwhile
        demo = server.load_demo(args.checkpoint, device=str(device), max_side=args.max_side)
        warm = None if args.no_warm_up else server.warm_up(demo)
    except (CheckpointError, BackendError, DeviceError, ValueError, OSError) as err:
        if sock is not None:
            sock.close()
        return fail(PROG, err)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    ready = f"warmed up in {warm:.1f} s; " if warm is not None else ""
    print(f"{PROG}: serving {demo.name} at http://{shown}:{port}/ ({ready}Ctrl+C stops it)", flush=True)
    try:
        server.serve(server.create_app(demo), sock, log_level="info" if args.verbose else "warning")
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print(f"{PROG}: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
