"""Messy files a lab folder really holds: each is converted correctly or skipped with a reason."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image
from PIL import Image

from leukoml.data import DataSpec, ImageError, decode_image, prepare_dataset, scan_dataset
from leukoml.errors import LeukomlError

RED, BLUE, GREEN = (220, 20, 30), (20, 30, 220), (20, 200, 40)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height`: a decompression-bomb probe."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def halves(left, right, size=(64, 32)) -> Image.Image:
    """Left half one colour, right half another: shows any rotation."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, : size[0] // 2] = left
    pixels[:, size[0] // 2:] = right
    return Image.fromarray(pixels)


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(halves(RED, BLUE), "JPEG", quality=95, exif=exif)


def close(pixel, colour, tolerance=6) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tolerance))


# --- decoding: converted ----------------------------------------------------------------


def test_exif_orientation_is_applied():
    # 6: the camera was turned; the image must be turned 90 degrees clockwise to display,
    # so the left half (red) ends on top. 3: turned 180 degrees, red ends on the right.
    # 8: 90 degrees counter-clockwise, red ends at the bottom.
    for orientation, first, second, axis in ((1, RED, BLUE, 1), (6, RED, BLUE, 0),
                                             (3, BLUE, RED, 1), (8, BLUE, RED, 0)):
        pixels = decode_image(exif_jpeg(orientation), 32)
        a, b = (pixels[4, 16], pixels[28, 16]) if axis == 0 else (pixels[16, 4], pixels[16, 28])
        assert close(a, first, 12) and close(b, second, 12), orientation


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16).repeat(16, 0).repeat(16, 1)
    pixels = decode_image(encode(Image.fromarray(values), "PNG"), 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert close(pixels[4, 4], (0, 0, 0), 1)
    assert close(pixels[4, 28], (127, 127, 127), 1)
    assert close(pixels[28, 4], (255, 255, 255), 1)
    assert close(pixels[28, 28], (63, 63, 63), 1)


def test_palette_png_keeps_its_colours_and_transparency_becomes_white():
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette(list(RED) + list(BLUE) + [0] * 762)
    palette.paste(0, (0, 0, 16, 32))
    assert close(decode_image(encode(palette, "PNG"), 32)[16, 4], RED, 0)
    assert close(decode_image(encode(palette, "PNG"), 32)[16, 28], BLUE, 0)
    transparent = decode_image(encode(palette, "PNG", transparency=0), 32)
    assert close(transparent[16, 4], (255, 255, 255), 0) and close(transparent[16, 28], BLUE, 0)


def test_rgba_png_is_laid_on_white():
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[..., :3] = RED
    pixels[:, :16, 3] = 0
    pixels[:, 16:, 3] = 255
    pixels[:16, 16:, 3] = 128
    out = decode_image(encode(Image.fromarray(pixels, "RGBA"), "PNG"), 32)
    assert close(out[20, 4], (255, 255, 255), 0)
    assert close(out[20, 28], RED, 0)
    blend = [round(255 + (c - 255) * 128 / 255) for c in RED]
    assert close(out[4, 28], blend, 2)


def test_cmyk_and_grayscale_jpegs_become_rgb():
    cmyk_jpeg = encode(Image.new("RGB", (40, 30), RED).convert("CMYK"), "JPEG", quality=95)
    cmyk = decode_image(cmyk_jpeg, 32)
    assert cmyk.shape == (32, 32, 3) and close(cmyk[16, 16], RED, 8)
    for fmt in ("JPEG", "PNG"):
        gray = decode_image(encode(Image.new("L", (40, 30), 90), fmt), 32)
        assert gray.shape == (32, 32, 3) and close(gray[16, 16], (90, 90, 90), 2)


def test_multipage_tiff_uses_the_first_page():
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), GREEN).save(
        buffer, "TIFF", save_all=True, append_images=[Image.new("RGB", (40, 30), BLUE)]
    )
    assert close(decode_image(buffer.getvalue(), 32)[16, 16], GREEN, 0)


def test_float_tiff_in_zero_one_is_scaled_to_bytes():
    pixels = decode_image(encode(Image.fromarray(np.full((30, 40), 0.5, np.float32)), "TIFF"), 32)
    assert close(pixels[16, 16], (127, 127, 127), 1)


# --- decoding: refused --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"Hello, this is a text file saved as .jpg\n", "not an image"),
        (encode(Image.new("RGB", (20, 20), RED), "GIF"), "unsupported image format GIF"),
        (png_claiming(100_000, 100_000), "decompression bomb"),
        (png_claiming(10_000, 8_000), "over the limit"),
    ],
    ids=["zero-bytes", "text", "gif", "bomb-10Gpx", "80Mpx"],
)
def test_unusable_bytes_are_refused_with_the_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data, 32)


def test_huge_header_is_refused_before_allocating():
    # 10 gigapixels would need 30 GB: refusing it at all, fast, proves nothing was decoded
    import time

    start = time.perf_counter()
    with pytest.raises(ImageError):
        decode_image(png_claiming(100_000, 100_000), 32)
    with pytest.raises(ImageError, match="10000x8000"):
        decode_image(png_claiming(10_000, 8_000), 32)
    assert time.perf_counter() - start < 1.0


def test_truncated_jpegs_are_refused():
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=90)
    for keep in (0.9, 0.5, 0.01):
        with pytest.raises(ImageError, match="truncated|unreadable"):
            decode_image(data[: int(len(data) * keep)], 32)


# --- a whole messy folder -------------------------------------------------------------------


@pytest.fixture
def messy_dataset(tmp_path) -> Path:
    """train/val/test with every kind of bad file in train, and odd class folder names."""
    root = tmp_path / "messy"
    classes = ("white cell", "neutrófilo", "好酸球")
    for split in ("train", "val", "test"):
        for c, name in enumerate(classes):
            for i in range(3):
                write_image(root / split / name / f"{split}_{c}_{i}.png", size=(40, 40))
    train = root / "train" / "white cell"
    (train / "zero.jpg").write_bytes(b"")
    noise = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    jpeg = encode(Image.fromarray(noise), "JPEG", quality=90)
    (train / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (train / "notes.jpg").write_text("not an image\n")
    (train / "._cell.jpg").write_bytes(b"\0\5\26\7" + b"\0" * 60)
    (train / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 30)
    (train / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (train / "rotated.jpg").write_bytes(exif_jpeg(6))
    white16 = Image.fromarray(np.full((30, 40), 65535, np.uint16))
    (train / "gray16.png").write_bytes(encode(white16, "PNG"))
    cmyk = Image.new("RGB", (40, 30), RED).convert("CMYK")
    (train / "cmyk.jpg").write_bytes(encode(cmyk, "JPEG"))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), GREEN).save(buffer, "TIFF", save_all=True,
                                            append_images=[Image.new("RGB", (40, 30), BLUE)])
    (train / "pages.tif").write_bytes(buffer.getvalue())
    (train / "readme.txt").write_text("lab notes")
    outside = tmp_path / "elsewhere"
    write_image(outside / "stray" / "x.png", size=(40, 40))
    os.symlink(outside / "stray" / "x.png", train / "link-out.png")
    os.symlink(outside / "stray", root / "train" / "linked class")
    os.symlink(outside / "stray", train / "linked folder")
    os.symlink(root / "train" / "neutrófilo" / "train_1_0.png", train / "link-in.png")
    (root / "train" / "empty class").mkdir()
    (root / "val" / "empty class").mkdir()
    os.mkfifo(train / "pipe.jpg")
    odd = train.parent / os.fsdecode(b"latin1-caf\xe9")  # folder and file names not in UTF-8
    odd.mkdir()
    blue = encode(Image.new("RGB", (40, 30), BLUE), "PNG")
    (odd / os.fsdecode(b"\xe9t\xe9.png")).write_bytes(blue)
    return root


def test_messy_folder_keeps_converts_and_lists_every_bad_file(messy_dataset):
    # checked before decoding: reading the FIFO would block forever
    assert "train/white cell/pipe.jpg" not in scan_dataset(messy_dataset).files
    data = prepare_dataset(DataSpec(str(messy_dataset), 32))
    reasons = dict(data.skipped)
    expected = {
        "train/white cell/zero.jpg": "empty file",
        "train/white cell/truncated.jpg": "truncated",
        "train/white cell/notes.jpg": "not an image",
        "train/white cell/._cell.jpg": "macOS",
        "train/white cell/.DS_Store": "hidden or system",
        "train/white cell/bomb.png": "decompression bomb",
        "train/white cell/readme.txt": "not an image file type (.txt)",
        "train/white cell/link-out.png": "symlink pointing outside",
        "train/linked class/": "symlinked folder",
        "train/white cell/linked folder/": "symlinked folder",
        "train/white cell/pipe.jpg": "not a regular file",
        "train/empty class/": "empty class folder",
        "val/empty class/": "empty class folder",
    }
    for file, reason in expected.items():
        assert reason in reasons.get(file, ""), (file, reasons.get(file))
    assert len(data.skipped) == len(expected)
    odd_class = os.fsdecode(b"latin1-caf\xe9")
    assert data.class_names == sorted(["white cell", "neutrófilo", "好酸球", odd_class])
    kept = dict(zip(data.files, range(len(data.files))))
    for name in ("rotated.jpg", "gray16.png", "cmyk.jpg", "pages.tif", "link-in.png"):
        assert f"train/white cell/{name}" in kept
    assert f"train/{odd_class}/" + os.fsdecode(b"\xe9t\xe9.png") in kept
    image = lambda name: data.images[kept[f"train/white cell/{name}"]]  # noqa: E731
    assert close(image("rotated.jpg")[4, 16], RED, 12)  # turned: the left half is on top
    assert close(image("rotated.jpg")[28, 16], BLUE, 12)
    assert close(image("gray16.png")[16, 16], (255, 255, 255), 0)
    assert close(image("cmyk.jpg")[16, 16], RED, 8)
    assert close(image("pages.tif")[16, 16], GREEN, 0)
    # the in-dataset symlink is read, and found as an exact copy of its target, which is
    # in another class: a label conflict
    assert data.leakage.pairs["label_conflicts"]["exact"]["train"] == 1
    assert sum(data.leakage.pairs["duplicates"]["exact"].values()) == 0


def test_symlinked_class_folder_is_not_followed(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        write_image(root / name / f"{name}.png")
    write_image(tmp_path / "outside" / "c.png")
    os.symlink(tmp_path / "outside", root / "c")
    listing = scan_dataset(root)
    assert listing.class_names == ["a", "b"]
    assert ("c/", "symlinked folder; not followed (follow_links true enters it)") in \
        listing.skipped


def test_non_utf8_file_names_are_listed_and_fingerprinted(tmp_path):
    root = tmp_path / "data"
    write_image(root / "a" / "a.png")
    (root / "b").mkdir()
    red = encode(Image.new("RGB", (9, 9), RED), "PNG")
    (root / "b" / os.fsdecode(b"b-\xff.png")).write_bytes(red)
    listing = scan_dataset(root)
    assert os.fsdecode(b"b/b-\xff.png") in listing.files
    assert len(listing.fingerprint) == 20


def test_skipped_non_utf8_names_are_reported_printable(make_dataset_folder):
    root = make_dataset_folder({"a": 10, "b": 10})
    (root / "a" / os.fsdecode(b"bad-\xff.jpg")).write_text("not an image")
    data = prepare_dataset(DataSpec(str(root), 32))
    assert ("a/bad-\\xff.jpg", "not an image (unrecognised content)") in data.skipped
    for file, reason in data.skipped:
        (file + reason).encode("utf-8")  # writable to a CSV or MLflow as it is


def test_a_dataset_of_only_bad_files_stops_with_a_clear_error(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "x.jpg").write_text("text")
    with pytest.raises(LeukomlError, match="no readable image"):
        prepare_dataset(DataSpec(str(root), 32))


def link_split(tmp_path) -> Path:
    """A split made of symlinks to images elsewhere, as people make splits without copying."""
    for name in ("a", "b"):
        for i in range(10):
            write_image(tmp_path / "pool" / name / f"{i}.png")
    root = tmp_path / "split"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            os.symlink(tmp_path / "pool" / name / f"{i}.png", root / name / f"{i}.png")
    return root


def test_a_split_of_links_outside_names_the_reason_and_the_option(tmp_path):
    """Before: 'needs at least 2 class folders with images, found none' and nothing else."""
    with pytest.raises(LeukomlError) as error:
        scan_dataset(link_split(tmp_path))
    text = str(error.value)
    assert "20 symlink pointing outside the dataset (a/0.png, a/1.png, a/2.png, ...)" in text
    assert "follow_links true" in text


def test_follow_links_reads_linked_files_and_enters_linked_folders_once(tmp_path):
    root = link_split(tmp_path)
    os.symlink(tmp_path / "pool" / "a", root / "b" / "more")  # a linked folder
    os.symlink(root / "b", root / "b" / "loop")  # and a loop back to its parent
    listing = scan_dataset(root, follow_links=True)
    assert listing.class_names == ["a", "b"]
    assert sorted(listing.files) == sorted(
        [f"a/{i}.png" for i in range(10)] + [f"b/{i}.png" for i in range(10)]
        + [f"b/more/{i}.png" for i in range(10)])
    data = prepare_dataset(DataSpec(str(root), 32, follow_links=True, group_by="none"))
    assert len(data.files) == 30 and not data.skipped


def test_skipped_files_are_named_on_the_console_even_when_the_data_then_stops(tmp_path, caplog):
    """Before: only a count was printed, and a run the data stopped logged no list."""
    root = tmp_path / "data"
    write_image(root / "a" / "ok.png")
    (root / "b").mkdir(parents=True)
    for i in range(7):
        (root / "b" / f"bad{i}.jpg").write_text("text")
    with caplog.at_level("WARNING", logger="leukoml.data"), \
            pytest.raises(LeukomlError, match="no readable image") as stopped:
        prepare_dataset(DataSpec(str(root), 32))
    text = caplog.text
    assert "skipped 7 file(s)" in text and "b/bad0.jpg: not an image" in text
    assert "and 2 more" in text
    # and the whole list survives the stop, in a file the error names
    listed = Path(str(stopped.value).rsplit("are listed in ", 1)[1].rstrip(")"))
    rows = listed.read_text().splitlines()
    assert rows[0] == "file,reason" and len(rows) == 8 and rows[1].startswith("b/bad")
