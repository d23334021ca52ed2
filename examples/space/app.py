"""hiertree's demo page as a Hugging Face Space (Docker SDK) or on any host: ``python app.py``, or
``uvicorn app:app`` behind your own server. The same app ``hiertree-demo`` serves (docs/demo.md).

Environment: HIERTREE_CHECKPOINT (a shipped model's name, a checkpoint or run folder copied beside this file, or a
Hub repo id; default the shipped pascal_part_lite0_cpu), HIERTREE_MAX_SIDE (default 1024), HOST (default 0.0.0.0,
what a Space needs), PORT (default 7860, a Space's app_port).
"""

import os

from hiertree.app.server import create_app, load_demo, warm_up

demo = load_demo(os.environ.get("HIERTREE_CHECKPOINT", "pascal_part_lite0_cpu"),
                 max_side=int(os.environ.get("HIERTREE_MAX_SIDE", "1024")))
warm_up(demo)  # the first visitor does not wait for the ONNX graph
app = create_app(demo)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "7860")))
