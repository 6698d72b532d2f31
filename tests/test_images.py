import io
import os

import numpy as np
import pytest
from PIL import Image, ImageFilter

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


def _brute_force(items, close):
    """Earlier kept items win; among several within reach, the closest (then the earliest)."""
    expected, kept = {}, []
    for i, item in enumerate(items):
        near = [(d, k) for k in kept if (d := close(item, items[k])) is not None]
        if near:
            expected[i] = min(near)[::-1]
        else:
            kept.append(i)
    return expected


def test_near_duplicate_index_matches_brute_force():
    rng = np.random.default_rng(1)
    base = [int(x) for x in rng.integers(0, 2**63, 200, dtype=np.int64)]
    hashes = base + [h ^ (1 << int(rng.integers(0, 64))) ^ (1 << int(rng.integers(0, 64))) for h in base[:50]]
    # Copies 3 to 13 bits away, some flips crowding one 16-bit band: every search plan (exact bands
    # up to 3 bits, 16-bit bands probed within 1 or 2 bits, the fallback above that) is exercised.
    for k, h in enumerate(base[50:110]):
        bits = rng.choice(16, 3 + k % 11, replace=True) if k % 2 else rng.choice(64, 3 + k % 11, replace=False)
        hashes.append(h ^ sum(1 << int(b) for b in set(bits.tolist())))
    prints = [img.Fingerprint(h, 30.0, bytes(48)) for h in hashes]
    for distance in (0, 2, 3, 4, 5, 6, 7, 9, 11, 13):
        found = {i: (d.kept, d.distance) for i, d in img.near_duplicate_of(prints, distance).items()}
        within = lambda a, b: img.hamming(a.phash, b.phash) if img.hamming(a.phash, b.phash) <= distance else None  # noqa: B023, E731
        assert found == _brute_force(prints, within)
    assert img.near_duplicate_of(prints, -1) == {}


def test_low_texture_colour_index_matches_brute_force():
    rng = np.random.default_rng(2)
    base = [rng.integers(0, 256, 3) for _ in range(150)]
    layouts = [np.tile(c, 16) + rng.integers(-1, 2, 48) for c in base]
    layouts += [layout + rng.integers(-3, 4, 48) for layout in layouts[:60]]
    prints = [img.Fingerprint(0, 0.5, np.clip(layout, 0, 255).astype(np.uint8).tobytes()) for layout in layouts]
    for tolerance in (0, 2, 3):
        found = img.near_duplicate_of(prints, 6, colour_tolerance=tolerance)
        assert {d.by for d in found.values()} <= {"colours"}

        def within(a, b, tolerance=tolerance):
            distance = img.colour_distance(a.colours, b.colours)
            return distance if distance <= tolerance else None

        assert {i: (d.kept, d.distance) for i, d in found.items()} == _brute_force(prints, within)


def test_phash_is_imagehash_phash():
    imagehash = pytest.importorskip("imagehash")
    rng = np.random.default_rng(3)
    for size in (32, 57, 224):
        image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").filter(
            ImageFilter.GaussianBlur(size / 40)
        )
        assert img.perceptual_hash(image) == int(str(imagehash.phash(image)), 16)


def _near_uniform(colour, seed, size=64, noise=1):
    """A calm-water / snow / cloud-like image: one colour plus ±``noise`` levels of sensor noise."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(colour, dtype=np.int16) + rng.integers(-noise, noise + 1, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("seed", range(5))
def test_near_uniform_images_are_judged_by_colour_not_by_hash_bits(seed):
    rng = np.random.default_rng(100 + seed)
    colours = [tuple(int(v) for v in rng.integers(20, 236, 3)) for _ in range(8)]
    distinct = [c for i, c in enumerate(colours) if all(max(abs(a - b) for a, b in zip(c, d)) > 8 for d in colours[:i])]
    flats = [_near_uniform(c, seed * 100 + k, noise=0) for k, c in enumerate(distinct)]
    noisy = [_near_uniform(c, seed * 100 + 50 + k) for k, c in enumerate(distinct)]
    prints = [img.fingerprint(i) for i in flats + noisy]
    assert all(p.texture < 1.0 for p in prints)
    found = img.near_duplicate_of(prints, max_distance=6)
    # Every different colour is kept; each noisy copy is a duplicate of its own flat image only.
    n = len(distinct)
    assert {i: (d.kept, d.by) for i, d in found.items()} == {n + k: (k, "colours") for k in range(n)}
    # Flat images all share one hash (every bit is a rounding tie): the hash could not tell them apart.
    assert len({p.phash for p in prints[:n]}) == 1


def test_textured_and_low_texture_images_are_never_compared(picture):
    textured = img.fingerprint(picture)
    flat = img.fingerprint(Image.new("RGB", picture.size, (0, 0, 0)))
    assert textured.texture > 20 and flat.texture == 0.0
    # Same hash on purpose: a textured image is still not a duplicate of a flat one.
    assert img.near_duplicate_of([textured, img.Fingerprint(textured.phash, 0.0, flat.colours)], 6) == {}


def test_load_rgb_turns_pillows_bomb_guard_into_a_value_error(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(path, optimize=True)  # 400 Mpx: over twice Pillow's limit
    with pytest.raises(ValueError, match="decompression-bomb guard"):
        img.load_rgb(path, max_pixels=10**12)
