"""Folder reader, transforms, SegDataset, pad_collate and build_datasets."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hiertree.data import (
    DataError,
    MaskFolder,
    PairTransform,
    SegDataset,
    SyntheticFigures,
    build_datasets,
    eval_transform,
    normalize_to_tensor,
    pad_collate,
    size_ordered,
    train_transform,
)

SHARED = Path(__file__).parents[2].parent / "shared" / "datasets"
SAMPLE = SHARED / "pascal-part-sample"
PNG_COPY = SHARED / "pascal-part"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real data sample not found at {SAMPLE}")
needs_png_copy = pytest.mark.skipif(not PNG_COPY.is_dir(), reason=f"real data copy not found at {PNG_COPY}")

PALETTE = np.array(  # class -> RGB, far apart so the class can be read back from the colour
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8
)
ROLES_CFG = {"background": "background", "head": "head", "torso": "torso", "upper_arm": "up_hand",
             "forearm": "low_hand", "hand": "low_hand", "thigh": "up_leg", "shin": "low_leg", "foot": "low_leg"}


def colour_coded(h, w, block, seed=0, values=range(7)):
    """A blocky class mask and an image whose colour is the class's palette entry."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array(list(values), np.uint8), size=(-(-h // block), -(-w // block)))
    mask = np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :w].copy()
    return PALETTE[mask], mask


def nearest_class(image):
    d = ((image[:, :, None, :].astype(np.int32) - PALETTE[None, None].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(-1)


# ---------------------------------------------------------------------- transforms
@pytest.mark.parametrize("seed", range(6))
def test_crop_pad_flip_keep_mask_and_image_aligned_exactly(seed):
    image, mask = colour_coded(50, 90, block=3, seed=seed)  # crop 64: pads the height, crops the width
    tf = train_transform(64, scale=(1.0, 1.0), longest=None, color_jitter=0.0, ignore_index=255, seed=seed)
    out_img, out_mask = tf(image, mask)
    assert out_img.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    valid = out_mask != 255
    assert valid.sum() == 50 * 64  # the 14 padded rows are ignore, nothing else
    assert np.array_equal(out_img[valid], PALETTE[out_mask[valid]])
    assert (out_img[~valid] == 0).all()  # image pad fill is 0


def test_flip_happens_and_is_applied_to_both():
    image, mask = colour_coded(40, 40, block=4, seed=1)
    flips = 0
    for seed in range(8):
        out_img, out_mask = train_transform(40, scale=(1, 1), longest=None, color_jitter=0, seed=seed)(image, mask)
        assert np.array_equal(out_img, PALETTE[out_mask])
        flips += np.array_equal(out_mask, mask[:, ::-1])
        assert np.array_equal(out_mask, mask) or np.array_equal(out_mask, mask[:, ::-1])
    assert 0 < flips < 8
    out = train_transform(40, scale=(1, 1), longest=None, hflip=False, color_jitter=0, seed=3)(image, mask)
    assert np.array_equal(out[1], mask)


@pytest.mark.parametrize("seed", range(5))
def test_scaling_uses_nearest_for_masks_and_keeps_geometry(seed):
    image, mask = colour_coded(120, 100, block=12, seed=seed, values=(0, 3, 6))
    tf = train_transform(64, scale=(0.5, 2.0), longest=90, color_jitter=0.0, seed=seed)
    out_img, out_mask = tf(image, mask)
    assert set(np.unique(out_mask)) <= {0, 3, 6, 255}  # linear interpolation would create 1, 2, 4, 5
    valid = out_mask != 255
    agree = nearest_class(out_img) == out_mask
    # away from class borders (3x3 of one class) the image colour must be the mask's class
    padded = np.pad(out_mask, 1, mode="edge")
    uniform = np.ones_like(valid)
    for dy in range(3):
        for dx in range(3):
            uniform &= padded[dy:dy + 64, dx:dx + 64] == out_mask
    assert agree[valid & uniform].all()
    assert agree[valid].mean() > 0.85  # borders of linearly resized colour blocks may blend either way
    # geometry is aligned: shifting the mask by a pixel or two only lowers the agreement
    cls = nearest_class(out_img)
    scores = {}
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            m = out_mask[2 + dy:62 + dy, 2 + dx:62 + dx]
            ok = m != 255
            scores[dy, dx] = (cls[2:62, 2:62] == m)[ok].mean()
    assert max(scores, key=scores.get) == (0, 0)
    assert all(v < scores[0, 0] for k, v in scores.items() if k != (0, 0))


def test_pad_fill_is_ignore_index_for_small_images():
    image, mask = colour_coded(20, 30, block=5)
    out_img, out_mask = train_transform(64, scale=(1, 1), longest=None, color_jitter=0, ignore_index=77, seed=0)(image, mask)
    assert (out_mask == 77).sum() == 64 * 64 - 20 * 30
    assert (out_img[out_mask == 77] == 0).all()


def test_colour_jitter_changes_image_not_mask():
    image, mask = colour_coded(32, 32, block=4)
    image = np.clip(image.astype(int) // 2 + 60, 0, 255).astype(np.uint8)
    changed = 0
    for seed in range(4):
        out_img, out_mask = train_transform(32, scale=(1, 1), longest=None, hflip=False, color_jitter=0.4, seed=seed)(image, mask)
        assert np.array_equal(out_mask, mask)
        changed += not np.array_equal(out_img, image)
    assert changed >= 2


def test_same_seed_same_augmentation():
    image, mask = colour_coded(80, 70, block=5)
    a = train_transform(48, seed=9)(image, mask)
    b = train_transform(48, seed=9)(image, mask)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_random_choices_of_the_ops_are_independent():
    """Each op draws from one shared stream: with a generator per op seeded alike, every decision was one draw."""
    import albumentations as A

    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    mask = np.arange(16, dtype=np.uint8).reshape(4, 4)
    t = PairTransform([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], seed=0)

    def flips(out_mask):
        return (np.array_equal(out_mask, mask[:, ::-1]) or np.array_equal(out_mask, mask[::-1, ::-1]),
                np.array_equal(out_mask, mask[::-1]) or np.array_equal(out_mask, mask[::-1, ::-1]))

    seeded = [flips(t(image, mask)[1]) for _ in range(200)]  # one stream from the construction seed
    reseeded = []
    for k in range(200):  # one reseed per sample, as SegDataset does
        t.reseed(1000 + k)
        reseeded.append(flips(t(image, mask)[1]))
    for draws in (seeded, reseeded):
        h, v = np.array(draws).T
        assert 0.35 < h.mean() < 0.65 and 0.35 < v.mean() < 0.65
        assert 0.3 < (h != v).mean() < 0.7  # independent decisions disagree about half the time, not never


def test_a_one_pixel_side_is_a_data_error_naming_the_sample(pascal):
    image, mask = np.zeros((1, 40, 3), np.uint8), np.zeros((1, 40), np.uint8)
    ds = SegDataset([(image, mask, "thin")], train_transform(8, scale=(0.5, 2.0), longest=None, seed=0), pascal)
    with pytest.raises(DataError, match=r"sample 'thin': augmentation failed on its 1x40 image"):
        for epoch in range(50):  # every draw below scale 1 makes a 0-pixel side
            ds[(epoch + 1) * len(ds)]


def test_eval_transform_resizes_longest_side_or_keeps_native():
    image, mask = colour_coded(60, 120, block=10, values=(0, 2, 4))
    out_img, out_mask = eval_transform(None)(image, mask)
    assert out_img is image and out_mask is mask
    out_img, out_mask = eval_transform(240)(image, mask)
    assert out_img.shape == (120, 240, 3) and out_mask.shape == (120, 240)
    assert np.array_equal(out_mask, np.repeat(np.repeat(mask, 2, 0), 2, 1))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"crop": 0}, "crop"), ({"crop": 32, "scale": (2.0, 1.0)}, "scale"), ({"crop": 32, "longest": 0}, "longest"),
     ({"crop": 32, "color_jitter": 2.0}, "color_jitter")],
)
def test_train_transform_rejects_bad_settings(kwargs, fragment):
    with pytest.raises(DataError, match=fragment):
        train_transform(**kwargs)


def test_normalize_to_tensor_known_values():
    image = np.zeros((2, 3, 3), np.uint8)
    image[1, 2] = (255, 0, 124)
    x = normalize_to_tensor(image)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (124 / 255 - 0.406) / 0.225]
    assert torch.allclose(x[:, 1, 2], torch.tensor(expected), atol=1e-5)
    assert torch.allclose(x[:, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]), atol=1e-5)
    with pytest.raises(DataError, match="uint8 HxWx3"):
        normalize_to_tensor(image.astype(np.float32))


# ---------------------------------------------------------------------- folder: real data
@needs_sample
def test_folder_reads_original_archive_layout(pascal):
    train = MaskFolder(SAMPLE, "train", pascal)
    assert len(train) == 16 and len(MaskFolder(SAMPLE, "val", pascal)) == 8
    assert b"\r\n" in (SAMPLE / "train_id.txt").read_bytes()  # the list really is CRLF
    assert all("\r" not in i and i == i.strip() for i in train.ids)
    for k in range(len(train)):
        image, mask, sid = train[k]
        assert sid == train.ids[k]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= set(range(7))


@needs_sample
@needs_png_copy
def test_png_copy_masks_equal_original_npy_masks(pascal):
    original = MaskFolder(SAMPLE, "val", pascal)
    copy = MaskFolder(PNG_COPY, "val", pascal)
    assert len(copy) == 410
    position = {sid: k for k, sid in enumerate(copy.ids)}
    common = [sid for sid in original.ids if sid in position]
    assert common, "the sample's val ids should be in the copy's val list"
    for k, sid in enumerate(original.ids):
        if sid in position:
            img_a, mask_a, _ = original[k]
            img_b, mask_b, sid_b = copy[position[sid]]
            assert sid_b == sid and np.array_equal(mask_a, mask_b) and img_a.shape == img_b.shape
            assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() < 8  # JPEG re-encoded at q85


@needs_png_copy
def test_png_copy_train_list(pascal):
    train = MaskFolder(PNG_COPY, "train", pascal)
    assert len(train) == 2826
    image, mask, sid = train[len(train) - 1]
    assert sid == train.ids[-1] and mask.shape == image.shape[:2] and mask.max() <= 6


# ---------------------------------------------------------------------- folder: synthetic files
def write_jpeg(path, image_rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image_rgb[..., ::-1]))


def make_folder(root, ids, h=16, w=20, npy=False, newline="\n"):
    """A valid dataset with colour-coded images; returns the masks by id."""
    masks = {}
    for k, sid in enumerate(ids):
        image, mask = colour_coded(h, w, block=4, seed=k)
        write_jpeg(root / "JPEGImages" / f"{sid}.jpg", image)
        if npy:
            (root / "gt_masks").mkdir(parents=True, exist_ok=True)
            np.save(root / "gt_masks" / f"{sid}.npy", mask)
        else:
            (root / "masks").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "masks" / f"{sid}.png"), mask)
        masks[sid] = mask
    (root / "train_id.txt").write_bytes(newline.join(ids).encode() + newline.encode())
    return masks


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("npy", [False, True])
def test_folder_round_trip_lf_crlf_png_npy(tmp_path, pascal, newline, npy):
    masks = make_folder(tmp_path, ["a1", "b2", "c3"], npy=npy, newline=newline)
    (tmp_path / "train_id.txt").write_bytes(b"\n" + (tmp_path / "train_id.txt").read_bytes() + b"  \n\n")
    ds = MaskFolder(tmp_path, "train", pascal)
    assert ds.ids == ["a1", "b2", "c3"]
    for k, sid in enumerate(ds.ids):
        image, mask, got = ds[k]
        assert got == sid and np.array_equal(mask, masks[sid])
        assert (nearest_class(image) == mask).mean() > 0.9  # RGB order, not BGR


def test_grayscale_and_rgba_images_become_rgb(tmp_path, pascal):
    make_folder(tmp_path, ["g", "r"])
    gray = np.full((16, 20), 123, np.uint8)
    cv2.imwrite(str(tmp_path / "JPEGImages" / "g.jpg"), gray)
    bgra = np.zeros((16, 20, 4), np.uint8)
    bgra[...] = (10, 20, 200, 128)  # B, G, R, A
    ok, png = cv2.imencode(".png", bgra)  # PNG bytes under a .jpg name: decoded by content
    (tmp_path / "JPEGImages" / "r.jpg").write_bytes(png.tobytes())
    ds = MaskFolder(tmp_path, "train", pascal)
    g, _, _ = ds[0]
    assert g.shape == (16, 20, 3) and (np.abs(g.astype(int) - 123) <= 1).all()
    r, _, _ = ds[1]
    assert r.shape == (16, 20, 3) and (r == (200, 20, 10)).all()


def test_palette_png_mask_reads_indices(tmp_path, pascal):
    Image = pytest.importorskip("PIL.Image")
    masks = make_folder(tmp_path, ["p"])
    im = Image.fromarray(masks["p"], mode="P")
    im.putpalette(PALETTE[::-1].ravel().tolist() + [0] * (256 - 7) * 3)
    im.save(tmp_path / "masks" / "p.png")
    assert np.array_equal(MaskFolder(tmp_path, "train", pascal)[0][1], masks["p"])


def _corrupt(kind, root):
    """Break sample 'b2' of a valid folder; return the file name the error must mention."""
    jpg, png = root / "JPEGImages" / "b2.jpg", root / "masks" / "b2.png"
    if kind == "garbage_jpeg":
        jpg.write_bytes(b"this is not an image at all" * 10)
    elif kind == "jpeg_header_garbage":
        jpg.write_bytes(b"\xff\xd8" + bytes(range(256)) * 2 + b"\xff\xd9")
    elif kind == "truncated_jpeg":
        jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    elif kind == "empty_jpeg":
        jpg.write_bytes(b"")
    elif kind == "size_mismatch":
        cv2.imwrite(str(png), np.zeros((10, 10), np.uint8))
        return "b2.png", ["10x10", "16x20"]
    elif kind == "bad_labels":
        cv2.imwrite(str(png), np.full((16, 20), 12, np.uint8))  # pascal_part node ids are 0..9
        return "b2.png", ["12 (320 px)", "no node id"]
    elif kind == "colour_mask":
        cv2.imwrite(str(png), np.zeros((16, 20, 3), np.uint8))
        return "b2.png", ["RGB"]
    elif kind == "garbage_png":
        png.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return "b2.png", []
    else:
        png.unlink()
        npy = root / "gt_masks" / "b2.npy"
        npy.parent.mkdir(exist_ok=True)
        if kind == "npy_3d":
            np.save(npy, np.zeros((16, 20, 1), np.uint8))
            return "b2.npy", ["2-D"]
        if kind == "npy_float":
            np.save(npy, np.zeros((16, 20), np.float32))
            return "b2.npy", ["dtype", "float32"]
        npy.write_bytes(b"not numpy")
        return "b2.npy", []
    return "b2.jpg", {"truncated_jpeg": ["truncated"], "empty_jpeg": ["empty"]}.get(kind, [])


BAD_KINDS = ["garbage_jpeg", "jpeg_header_garbage", "truncated_jpeg", "empty_jpeg", "size_mismatch", "bad_labels",
             "colour_mask", "garbage_png", "npy_3d", "npy_float", "npy_garbage"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_sample_raises_data_error_naming_the_file(tmp_path, pascal, kind):
    make_folder(tmp_path, ["a1", "b2", "c3"])
    name, fragments = _corrupt(kind, tmp_path)
    ds = MaskFolder(tmp_path, "train", pascal)  # decoding errors surface at __getitem__
    ds[0]
    with pytest.raises(DataError) as err:
        ds[1]
    assert name in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_root(tmp_path, pascal):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        MaskFolder(tmp_path / "nowhere", "train", pascal)


def test_missing_split_lists_available(tmp_path, pascal):
    make_folder(tmp_path, ["a1"])
    (tmp_path / "val_id.txt").write_text("a1\n")
    with pytest.raises(DataError) as err:
        MaskFolder(tmp_path, "test", pascal)
    assert "test_id.txt" in str(err.value) and "train, val" in str(err.value)


def test_empty_split_list(tmp_path, pascal):
    make_folder(tmp_path, ["a1"])
    (tmp_path / "train_id.txt").write_bytes(b"\r\n  \r\n")
    with pytest.raises(DataError, match="train_id.txt.*empty"):
        MaskFolder(tmp_path, "train", pascal)


def test_duplicate_ids(tmp_path, pascal):
    make_folder(tmp_path, ["a1", "b2"])
    (tmp_path / "train_id.txt").write_bytes(b"a1\r\nb2\r\na1\r\n")
    with pytest.raises(DataError) as err:
        MaskFolder(tmp_path, "train", pascal)
    assert all(s in str(err.value) for s in ("train_id.txt", "'a1'", "line 3", "line 1"))


def test_missing_image(tmp_path, pascal):
    make_folder(tmp_path, ["a1", "b2"])
    (tmp_path / "JPEGImages" / "b2.jpg").unlink()
    with pytest.raises(DataError, match=r"b2\.jpg.*not found"):
        MaskFolder(tmp_path, "train", pascal)


def test_images_found_by_other_extensions_and_letter_case(tmp_path, pascal):
    masks = make_folder(tmp_path, ["a1", "b2", "c3"])
    images = tmp_path / "JPEGImages"
    (images / "a1.jpg").rename(images / "a1.JPG")  # as cameras name them
    b2 = cv2.imread(str(images / "b2.jpg"))
    (images / "b2.jpg").unlink()
    cv2.imwrite(str(images / "b2.png"), b2)  # lossless: the pixels must come back exactly
    ds = MaskFolder(tmp_path, "train", pascal)
    assert [ds.image_path(k).name for k in range(3)] == ["a1.JPG", "b2.png", "c3.jpg"]
    image, mask, sid = ds[1]
    assert sid == "b2" and np.array_equal(image, b2[:, :, ::-1]) and np.array_equal(mask, masks["b2"])


@pytest.mark.parametrize("npy", [False, True])
def test_sizes_from_mask_headers_order_evaluation(tmp_path, pascal, npy):
    make_folder(tmp_path, ["a1", "b2", "c3"], npy=npy)  # 16x20 each
    image, mask = colour_coded(8, 12, block=4, seed=5)  # b2 becomes the smaller one
    write_jpeg(tmp_path / "JPEGImages" / "b2.jpg", image)
    if npy:
        np.save(tmp_path / "gt_masks" / "b2.npy", mask)
    else:
        cv2.imwrite(str(tmp_path / "masks" / "b2.png"), mask)
    folder = MaskFolder(tmp_path, "train", pascal)
    assert [folder.mask_size(i) for i in range(3)] == [(16, 20), (8, 12), (16, 20)]
    assert size_ordered(SegDataset(folder, None, pascal)) == [1, 0, 2]  # stable within a size
    assert size_ordered(SegDataset([(image, mask)], None, pascal)) is None  # a source that cannot tell: natural order


def test_size_order_after_dropping_bad_samples(tmp_path, pascal):
    from hiertree.data import drop_bad_samples

    make_folder(tmp_path, ["a1", "b2", "c3"])
    (tmp_path / "JPEGImages" / "b2.jpg").write_bytes(b"not a jpeg")
    ds = SegDataset(MaskFolder(tmp_path, "train", pascal, skip_bad=True), None, pascal)
    assert [b["id"] for b in drop_bad_samples(ds)] == ["b2"]
    assert size_ordered(ds) == [0, 1] and [ds[i]["id"] for i in size_ordered(ds)] == ["a1", "c3"]


def test_missing_mask_names_both_formats(tmp_path, pascal):
    make_folder(tmp_path, ["a1", "b2", "c3"])
    (tmp_path / "masks" / "b2.png").unlink()
    (tmp_path / "masks" / "c3.png").unlink()
    with pytest.raises(DataError) as err:
        MaskFolder(tmp_path, "train", pascal)
    msg = str(err.value)
    assert "b2.png" in msg and "b2.npy" in msg and "1 more" in msg


# ---------------------------------------------------------------------- skip_bad
def test_skip_bad_records_and_returns_next_good(tmp_path, pascal):
    make_folder(tmp_path, ["a1", "b2", "c3", "d4"])
    _corrupt("truncated_jpeg", tmp_path)
    (tmp_path / "masks" / "d4.png").unlink()  # missing file: tolerated at init with skip_bad
    ds = MaskFolder(tmp_path, "train", pascal, skip_bad=True)
    assert len(ds) == 4
    with pytest.warns(RuntimeWarning, match="b2"):
        assert ds[1][2] == "c3"
    with pytest.warns(RuntimeWarning, match="d4"):
        assert ds[3][2] == "a1"  # wraps around
    assert ds[1][2] == "c3"  # recorded once only
    assert [sid for sid, _ in ds.skipped] == ["b2", "d4"]
    assert "b2.jpg" in ds.skipped[0][1] and "d4.npy" in ds.skipped[1][1]


def test_skip_bad_all_bad_raises(tmp_path, pascal):
    make_folder(tmp_path, ["a1", "b2"])
    for sid in ("a1", "b2"):
        (tmp_path / "JPEGImages" / f"{sid}.jpg").write_bytes(b"junk")
    ds = MaskFolder(tmp_path, "train", pascal, skip_bad=True)
    with pytest.warns(RuntimeWarning), pytest.raises(DataError, match="every sample is bad"):
        ds[0]
    assert len(ds.skipped) == 2


# ---------------------------------------------------------------------- SegDataset / pad_collate
def test_seg_dataset_output_types_and_ignore_kept(pascal):
    image, mask = colour_coded(10, 12, block=2)
    mask[0, 0] = 255
    ds = SegDataset([(image, mask), (image, mask, "x7")], None, pascal)
    a, b = ds[0], ds[1]
    assert a["id"] == "0" and b["id"] == "x7"
    assert a["image"].shape == (3, 10, 12) and a["image"].dtype == torch.uint8
    assert a["mask"].dtype == torch.int64 and a["mask"][0, 0] == 255
    assert torch.equal(a["mask"], torch.from_numpy(mask.astype(np.int64)))


def test_seg_dataset_rejects_values_outside_taxonomy(pascal):
    image, mask = colour_coded(8, 8, block=2)
    mask[3, 3] = 10  # pascal_part: leaves 0..6, inner nodes 7..9
    with pytest.raises(DataError, match="'bad'.*label values 10 \\(1 px\\)"):
        SegDataset([(image, mask, "bad")], None, pascal)[0]
    mask[3, 3] = 8  # upper_body: a valid node id, a partial label
    item = SegDataset([(image, mask, "ok")], None, pascal)[0]
    assert item["partial"] and int(item["mask"][3, 3]) == 8


def test_seg_dataset_follows_torch_seed(pascal):
    image, mask = colour_coded(64, 64, block=4)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        ds = SegDataset([(image, mask)] * 3, train_transform(32), pascal)
        outs.append(torch.stack([ds[k]["mask"] for k in range(3)]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0][0], outs[0][1])  # the stream advances between samples


def test_dataloader_workers_do_not_repeat_augmentations(pascal):
    image, mask = colour_coded(64, 64, block=4)
    ds = SegDataset([(image, mask)] * 8, train_transform(24, scale=(1, 1), longest=None, color_jitter=0), pascal)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork")
    masks = [b["mask"][0] for b in loader]  # batches alternate between worker 0 and worker 1
    assert any(not torch.equal(masks[k], masks[k + 1]) for k in range(0, 8, 2))
    assert len({m.numpy().tobytes() for m in masks}) >= 6


def test_pad_collate_shapes_and_fill():
    a = {"image": torch.ones(3, 5, 7), "mask": torch.full((5, 7), 2, dtype=torch.long), "id": "a"}
    b = {"image": torch.full((3, 6, 4), 2.0), "mask": torch.full((6, 4), 3, dtype=torch.long), "id": "b"}
    out = pad_collate([a, b], ignore_index=255, multiple=4)
    assert out["image"].shape == (2, 3, 8, 8) and out["mask"].shape == (2, 8, 8)
    assert out["size"] == [(5, 7), (6, 4)] and out["id"] == ["a", "b"]
    assert (out["image"][0, :, :5, :7] == 1).all() and out["image"][0].sum() == 3 * 5 * 7
    assert (out["image"][1, :, :6, :4] == 2).all() and out["image"][1].sum() == 2 * 3 * 6 * 4
    assert (out["mask"][0, :5, :7] == 2).all() and (out["mask"][0] == 255).sum() == 64 - 35
    assert (out["mask"][1, :6, :4] == 3).all() and (out["mask"][1] == 255).sum() == 64 - 24
    assert pad_collate([a, b], ignore_index=255)["image"].shape == (2, 3, 6, 7)
    with pytest.raises(DataError, match="multiple"):
        pad_collate([a], 255, multiple=0)


# ---------------------------------------------------------------------- build_datasets
def synthetic_cfg(**over):
    cfg = {"kind": "synthetic", "crop": 64, "longest": None, "scale": [0.5, 2.0],
           "synthetic": {"num_train": 6, "num_val": 3, "size": 64, "seed": 4, "roles": ROLES_CFG}}
    cfg.update(over)
    return cfg


def test_build_synthetic(pascal):
    train, val = build_datasets(synthetic_cfg(), pascal)
    assert len(train) == 6 and len(val) == 3
    sample = train[0]
    assert sample["image"].shape == (3, 64, 64) and sample["mask"].shape == (64, 64)
    assert set(sample["mask"].unique().tolist()) <= set(range(7)) | {255}
    assert np.array_equal(val.source[0][0], SyntheticFigures(3, 64, seed=5)[0][0])  # val seed = seed + 1
    assert np.array_equal(train.source[0][0], SyntheticFigures(3, 64, seed=4)[0][0])
    assert torch.equal(val[1]["mask"], torch.from_numpy(val.source[1][1].astype(np.int64)))  # no augmentation
    a, _ = build_datasets(synthetic_cfg(), pascal, seed=7)
    b, _ = build_datasets(synthetic_cfg(), pascal, seed=7)
    assert all(torch.equal(a[k]["image"], b[k]["image"]) for k in range(3))  # seed fixes augmentation


@pytest.mark.parametrize(
    "cfg, fragment",
    [
        (synthetic_cfg(kind="folders"), "did you mean 'folder'"),
        (synthetic_cfg(crpo=64), "data.crpo"),
        (synthetic_cfg(synthetic={"num_train": 2}), "data.synthetic.roles"),
        (synthetic_cfg(synthetic={"num_train": 2, "roles": None}), "data.synthetic.roles"),
        (synthetic_cfg(synthetic={"roles": {"background": "background", "head": "hed"}}), "did you mean 'head'"),
        ({"kind": "folder"}, "data.root"),
    ],
)
def test_build_errors(pascal, cfg, fragment):
    with pytest.raises(DataError) as err:
        build_datasets(cfg, pascal)
    assert fragment in str(err.value)


@needs_sample
def test_build_folder_on_sample(pascal):
    train, val = build_datasets({"kind": "folder", "root": str(SAMPLE), "crop": 96, "longest": 200}, pascal)
    assert len(train) == 16 and len(val) == 8
    assert train[0]["image"].shape == (3, 96, 96)
    v = val[0]
    assert max(v["image"].shape[1:]) == 200 and v["mask"].shape == v["image"].shape[1:]
    batch = pad_collate([val[k] for k in range(3)], ignore_index=pascal.ignore_index, multiple=32)
    assert batch["image"].shape[2] % 32 == 0 and batch["image"].shape[3] == 224
