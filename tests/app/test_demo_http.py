"""The demo page's HTTP API against a real ``hiertree-demo`` on a loopback port: a real photo's maps equal
``model.predict`` on the same image, the legend is the taxonomy's, the ladder is the calibration's, and every bad
input gets one clear message while the server keeps serving."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from hiertree.app.upload import MAX_BYTES
from hiertree.images import read_image

httpx = pytest.importorskip("httpx", reason="httpx is in the test extra: pip install -e '.[test]'")


def _post(server, data: bytes | None, name: str = "photo.jpg", threshold: str | None = None) -> httpx.Response:
    files = {"image": (name, data, "application/octet-stream")} if data is not None else None
    form = {"threshold": threshold} if threshold is not None else {}
    return httpx.post(server.url + "api/predict", files=files, data=form, timeout=120)


def _labels(data_url: str) -> np.ndarray:
    """A label map the API returned (a lossless PNG data URL) as the array it encodes."""
    head, body = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    return cv2.imdecode(np.frombuffer(base64.b64decode(body), np.uint8), cv2.IMREAD_UNCHANGED)


def _assert_same_maps(out: dict, pred: dict) -> None:
    assert len(out["levels"]) == len(pred["levels"])
    for level, expected in zip(out["levels"], pred["levels"]):
        got = _labels(level["labels"])
        assert got.shape == expected.shape and np.array_equal(got, expected), f"L{level['level']} differs"
        assert sum(level["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert np.array_equal(_labels(out["nodes"]["labels"]), pred["nodes"])


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return buf.tobytes()


def test_page_and_info_come_from_the_taxonomy_and_the_calibration(demo_server, shipped_model, thresholds):
    page = httpx.get(demo_server.url, timeout=30)
    assert page.status_code == 200 and "<title>hiertree demo</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere: works offline
    info = httpx.get(demo_server.url + "api/info", timeout=30).json()
    tax = shipped_model.taxonomy
    for l, level in enumerate(info["taxonomy"]["levels"]):
        assert [c["name"] for c in level["classes"]] == tax.classes(l)
        assert [bytes.fromhex(c["color"][1:]) for c in level["classes"]] == [bytes(c) for c in tax.colors(l)]
    nodes = info["taxonomy"]["nodes"]  # in tree order: each node right after its parent
    assert sorted((n["id"], n["name"]) for n in nodes) == list(enumerate(tax.node_names))
    for k, node in enumerate(nodes):
        parents = tax.ancestors(node["name"])
        assert not parents or parents[0] in [m["name"] for m in nodes[:k]]
        assert bytes.fromhex(node["color"][1:]) == bytes(tax.node_colors()[node["id"]])
    calibration = json.loads((shipped_model.checkpoint_dir / "backoff.json").read_text())
    backoff = info["backoff"]
    assert backoff["calibrated"] and backoff["threshold"] == calibration["threshold"] == thresholds[0]
    assert [(r["target"], r["threshold"]) for r in backoff["ladder"]] == \
        [(r["target"], r["threshold"]) for r in calibration["ladder"]]
    for example in info["examples"]:
        photo = httpx.get(demo_server.url + example["url"].lstrip("/"), timeout=30)
        assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert httpx.get(demo_server.url + "api/examples/nothing.jpg", timeout=30).status_code == 404


@pytest.mark.parametrize("rung", [0, 1], ids=["calibrated", "stricter"])
def test_a_real_photo_gives_the_maps_of_model_predict(demo_server, shipped_model, astronaut, thresholds, rung):
    threshold = thresholds[rung]
    response = _post(demo_server, astronaut.read_bytes(), "astronaut.jpg", str(threshold))
    assert response.status_code == 200, response.text[:500]
    out = response.json()
    pred = shipped_model.predict(read_image(astronaut), backoff=threshold)
    _assert_same_maps(out, pred)
    assert out["threshold"] == threshold and out["notes"] == []
    assert out["image"] == {"name": "astronaut.jpg", "width": 512, "height": 512, "original_width": 512,
                            "original_height": 512}
    fg = out["nodes"]["foreground"]
    assert fg["pixels"] > 10_000 and 0.0 < fg["leaf_share"] < 1.0  # a person, partly said as a parent
    assert fg["parent_pixels"] == int((pred["nodes"] >= shipped_model.taxonomy.num_leaves).sum())
    assert set(out["timings_ms"]) == {"decode", "predict", "draw", "total"}
    assert all(v > 0 for v in out["timings_ms"].values())
    for view in [*out["levels"], out["nodes"]]:
        assert view["overlay"].startswith("data:image/jpeg;base64,")


def test_a_stricter_promise_backs_off_more_and_no_threshold_means_the_calibrated_one(demo_server, astronaut,
                                                                                    thresholds):
    calibrated, stricter = thresholds
    posted = (f"{calibrated - 0.15:.2f}", f"{stricter:.2f}", None)
    loose, strict, default = (_post(demo_server, astronaut.read_bytes(), "a.jpg", t).json() for t in posted)
    assert default["threshold"] == calibrated
    assert loose["nodes"]["foreground"]["leaf_share"] > default["nodes"]["foreground"]["leaf_share"] > \
        strict["nodes"]["foreground"]["leaf_share"]
    for a, b in zip(loose["levels"], strict["levels"]):
        assert a["labels"] == b["labels"]  # the threshold changes the node map only


def test_grayscale_rgba_and_16_bit_images_are_predicted_and_said_so(demo_server, shipped_model, astronaut):
    rgb = read_image(astronaut)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    alpha = np.full(gray.shape, 128, np.uint8)
    deep = rgb[..., ::-1].astype(np.uint16) * 257  # 16 bits whose top byte is the 8-bit photo
    cases = {"gray.png": (_png(gray), gray, "grayscale image"),
             "rgba.png": (_png(np.dstack([rgb[..., ::-1], alpha])), rgb, "RGBA image: the transparency"),
             "deep.png": (_png(deep), rgb, "16-bit image: scaled to 8 bits")}
    for name, (data, image, note) in cases.items():
        response = _post(demo_server, data, name, "0.7")
        assert response.status_code == 200, response.text[:500]
        out = response.json()
        assert len(out["notes"]) == 1 and out["notes"][0].startswith(note), out["notes"]
        _assert_same_maps(out, shipped_model.predict(image, backoff=0.7))


def test_a_huge_photo_is_shrunk_and_said_so(demo_server, shipped_model):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    huge = cv2.resize(small, (5000, 3000), interpolation=cv2.INTER_CUBIC)  # 15 MP, a smooth JPEG of a few MB
    data = _jpeg(huge)
    response = _post(demo_server, data, "huge.jpg", "0.7")
    assert response.status_code == 200, response.text[:500]
    out = response.json()
    assert out["image"]["width"] == 1024 and out["image"]["height"] == 614
    assert (out["image"]["original_width"], out["image"]["original_height"]) == (5000, 3000)
    assert any("shrunk from 5000x3000 to 1024x614" in n for n in out["notes"]), out["notes"]
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    shrunk = cv2.resize(np.ascontiguousarray(decoded), (1024, 614), interpolation=cv2.INTER_AREA)
    _assert_same_maps(out, shipped_model.predict(shrunk, backoff=0.7))


@pytest.mark.parametrize("case", ["not an image", "empty", "1x1", "truncated jpeg", "too large", "bad threshold",
                                  "no file"])
def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(demo_server, astronaut, case):
    photo = astronaut.read_bytes()
    request, words = {
        "not an image": ((b"this is a text file, not a photo\n", "notes.txt", None), "notes.txt: not an image"),
        "empty": ((b"", "empty.jpg", None), "empty.jpg: the file is empty"),
        "1x1": ((_png(np.zeros((1, 1, 3), np.uint8)), "dot.png", None), "dot.png: the image is 1x1 pixels, too small"),
        "truncated jpeg": ((photo[: len(photo) // 2], "cut.jpg", None), "cut.jpg: truncated JPEG"),
        "too large": ((photo + bytes(MAX_BYTES), "big.jpg", None),
                      f"big.jpg: the file is 40 MiB, above the page's limit of {MAX_BYTES // 2**20} MiB"),
        "bad threshold": ((photo, "astronaut.jpg", "1.5"), "threshold '1.5' is not a number in [0, 1]"),
        "no file": ((None, "", "0.7"), "no photo in the request"),
    }[case]
    response = _post(demo_server, *request)
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert error.startswith(words) and "\n" not in error, error
    assert httpx.get(demo_server.url + "api/health", timeout=30).json() == {"ok": True}
    assert _post(demo_server, photo, "astronaut.jpg", "0.7").status_code == 200
