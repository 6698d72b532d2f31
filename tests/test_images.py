import io
import os

import numpy as np
import pytest
from PIL import Image

from dldc.data import images as img


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))
    return Image.fromarray(base, "RGB")


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("CMYK", "JPEG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("I;16", "TIFF"),
        ("F", "TIFF"),
        ("RGB", "TIFF"),
        ("1", "PNG"),
    ],
)
def test_modes_convert_to_rgb_and_are_kept(tmp_path, picture, mode, fmt):
    if mode == "I;16":
        source = Image.fromarray(np.asarray(picture.convert("L"), dtype=np.uint16) * 200)
        assert source.mode == "I;16"
    elif mode == "F":
        source = Image.fromarray(np.asarray(picture.convert("L"), dtype=np.float32) / 255.0)
    else:
        source = picture.convert(mode)
    path = _save(tmp_path / f"x.{fmt.lower()}", source, format=fmt)
    check = img.inspect_image(path, max_pixels=10**6, min_side=8)
    assert check.ok, check.detail
    assert (check.width, check.height) == (64, 64)
    rgb = img.load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (64, 64)
    if mode in ("I;16", "F"):
        # The stretch keeps the structure: it correlates with the 8-bit grey original.
        grey = np.asarray(picture.convert("L"), dtype=float).ravel()
        assert np.corrcoef(grey, np.asarray(rgb)[..., 0].ravel())[0, 1] > 0.99


def test_rgba_is_composited_on_black(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (200, 100, 50, 0))
    path = _save(tmp_path / "a.png", rgba)
    assert img.load_rgb(path).getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p, pic: p.write_bytes(b""), img.EMPTY_FILE),
        (lambda p, pic: p.write_bytes(b"this is not an image at all"), img.NOT_AN_IMAGE),
        (lambda p, pic: p.write_bytes(_jpeg_bytes(pic)[:600]), img.CORRUPT_IMAGE),
        (lambda p, pic: None, img.MISSING_FILE),
        (lambda p, pic: _save(p, pic.resize((4, 64)), format="PNG"), img.TOO_SMALL),
        (lambda p, pic: _save(p, pic.resize((2000, 2000)), format="PNG"), img.TOO_LARGE),
    ],
)
def test_bad_files_get_reason_codes(tmp_path, picture, make, reason):
    path = tmp_path / "bad.jpg"
    make(path, picture)
    check = img.inspect_image(path, max_pixels=1_000_000, min_side=8)
    assert not check.ok and check.reason == reason, check


def test_bomb_guard_rejects_from_header_without_decoding(tmp_path):
    # A 20000x20000 PNG of one colour: tiny on disk, 400 Mpx decoded.
    path = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(path, optimize=True)
    assert os.path.getsize(path) < 2_000_000
    check = img.inspect_image(path, max_pixels=64_000_000, min_side=8)
    assert check.reason == img.TOO_LARGE and "400000000 pixels" in check.detail


def _jpeg_bytes(picture):
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_resolve_inside_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "images" / "link.jpg")
    assert img.resolve_inside(root, "images/a.jpg") == (root / "images" / "a.jpg").resolve()
    for bad in ["../secret.jpg", "images/../../secret.jpg", str(tmp_path / "secret.jpg"), "images/link.jpg", ""]:
        with pytest.raises(img.PathEscapeError):
            img.resolve_inside(root, bad)


def test_perceptual_hash_is_robust_to_reencoding_but_separates_images(picture):
    again = Image.open(io.BytesIO(_jpeg_bytes(picture))).convert("RGB").resize((48, 48))
    other = picture.transpose(Image.Transpose.ROTATE_90)
    h = img.perceptual_hash(picture)
    assert img.hamming(h, img.perceptual_hash(again)) <= 4
    assert img.hamming(h, img.perceptual_hash(other)) > 12


def test_near_duplicate_index_matches_brute_force():
    rng = np.random.default_rng(1)
    base = [int(x) for x in rng.integers(0, 2**63, 200, dtype=np.int64)]
    hashes = base + [h ^ (1 << int(rng.integers(0, 64))) ^ (1 << int(rng.integers(0, 64))) for h in base[:50]]
    for distance in (0, 2, 5):
        found = img.near_duplicate_of(hashes, distance)
        expected = {}
        kept = []
        for i, h in enumerate(hashes):
            close = [(img.hamming(h, hashes[k]), k) for k in kept if img.hamming(h, hashes[k]) <= distance]
            if close:
                d, k = min(close)
                expected[i] = (k, d)
            else:
                kept.append(i)
        assert found == expected
    assert img.near_duplicate_of(hashes, -1) == {}
