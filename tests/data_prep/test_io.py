"""Micrograph reading and writing: formats, metadata, bad inputs, atomic writes, memmaps."""
from __future__ import annotations

import json
import struct
import sys
import time
import tracemalloc
import types
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from data_prep.io import (
    MicrographMeta,
    canonical_length_unit,
    create_output_memmap,
    list_micrographs,
    open_micrograph_memmap,
    read_micrograph,
    read_micrograph_meta,
    release_memmap_pages,
    temporary_memmap,
    validate_image,
    write_micrograph,
)
from data_prep.io import checks as io_checks
from data_prep.io import tiff as io_tiff
from data_prep.io import write as io_write
from stem_denoise.common.errors import InputError

RNG = np.random.default_rng(1234)


def noisy(shape=(23, 31), dtype="uint16", scale=1000.0):
    """A non-constant image with a known dtype."""
    a = RNG.random(shape) * scale
    if np.dtype(dtype).kind == "i":
        a = a - scale / 2
    return a.astype(dtype)


def tiff_bytes(width, height, data=b"", *, bps=16, sample_format=1, declared_count=None, compression=1):
    """A minimal little-endian one-strip TIFF whose header may lie about its size."""
    n = 10
    data_off = 8 + 2 + n * 12 + 4
    count = len(data) if declared_count is None else declared_count
    entries = []

    def e(tag, typ, cnt, val):
        entries.append(struct.pack("<HHII", tag, typ, cnt, val) if typ == 4
                       else struct.pack("<HHIHH", tag, typ, cnt, val, 0))

    e(256, 4, 1, width)
    e(257, 4, 1, height)
    e(258, 3, 1, bps)
    e(259, 3, 1, compression)
    e(262, 3, 1, 1)
    e(273, 4, 1, data_off)
    e(277, 3, 1, 1)
    e(278, 4, 1, max(height, 1))
    e(279, 4, 1, count)
    e(339, 3, 1, sample_format)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", n) + b"".join(entries) + struct.pack("<I", 0) + data


def png_with_phys(path: Path, image: np.ndarray, pixels_per_metre: int) -> None:
    """Write a PNG with cv2 and insert a pHYs chunk (unit: metre) after IHDR."""
    ok, buf = cv2.imencode(".png", image)
    assert ok
    raw = buf.tobytes()
    body = struct.pack(">IIB", pixels_per_metre, pixels_per_metre, 1)
    chunk = struct.pack(">I", len(body)) + b"pHYs" + body + struct.pack(">I", zlib.crc32(b"pHYs" + body) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4
    path.write_bytes(raw[:ihdr_end] + chunk + raw[ihdr_end:])


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "uint32", "float32", "float64"])
def test_tiff_round_trip_keeps_values_dtype_and_pixel_size(tmp_path, dtype):
    img = noisy(dtype=dtype)
    meta = MicrographMeta(dtype, 0.013717, "nm", "", img.shape)
    out = write_micrograph(tmp_path / "a.tif", img, meta)
    back, m = read_micrograph(out)
    assert back.dtype == np.float32 and back.shape == img.shape
    np.testing.assert_array_equal(back, img.astype(np.float32))
    assert m.source_dtype == dtype
    assert m.unit == "nm" and m.pixel_size == pytest.approx(0.013717, rel=1e-7)
    assert m.shape == img.shape
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].dtype == np.dtype(dtype)
        # ImageJ-compatible dtypes carry the unit where Fiji reads it
        if dtype in ("uint8", "uint16", "float32"):
            assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm"
        else:
            assert tif.pages[0].tags["ResolutionUnit"].value == 3  # centimetre, read by Bio-Formats
    assert no_temp_files(tmp_path)


def test_write_float32_on_request_and_integer_rounding_and_clipping(tmp_path):
    img = np.array([[-3.4, 2.6, 70000.2], [12.49, 100.5001, 65535.4]], dtype=np.float32)
    meta = MicrographMeta("uint16", 10.0, "pm", "", img.shape)
    write_micrograph(tmp_path / "u.tif", img, meta)
    back, m = read_micrograph(tmp_path / "u.tif")
    np.testing.assert_array_equal(back, [[0, 3, 65535], [12, 101, 65535]])
    assert m.source_dtype == "uint16" and m.unit == "pm" and m.pixel_size == pytest.approx(10.0)
    write_micrograph(tmp_path / "f.tif", img, meta, dtype="float32")
    back, m = read_micrograph(tmp_path / "f.tif")
    np.testing.assert_array_equal(back, img)
    assert m.source_dtype == "float32"


def test_integer_to_narrower_integer_is_clipped(tmp_path):
    img = np.array([[-5, 0, 17], [255, 256, 100000]], dtype=np.int32)
    write_micrograph(tmp_path / "c.tif", img, MicrographMeta("uint8", None, None, "", img.shape))
    back, m = read_micrograph(tmp_path / "c.tif")
    np.testing.assert_array_equal(back, [[0, 0, 17], [255, 255, 255]])
    mask = np.eye(4, dtype=bool)
    write_micrograph(tmp_path / "m.tif", mask, dtype="uint16")
    np.testing.assert_array_equal(read_micrograph(tmp_path / "m.tif")[0], mask)


def test_write_integer_refuses_nan_but_float_keeps_it(tmp_path):
    img = noisy(dtype="float32")
    img[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_micrograph(tmp_path / "n.tif", img, dtype="uint16")
    assert not (tmp_path / "n.tif").exists() and no_temp_files(tmp_path)
    write_micrograph(tmp_path / "n.tif", img)
    back, _ = read_micrograph(tmp_path / "n.tif", validate=False)
    assert np.isnan(back[3, 4])


def test_source_dtype_without_meta_is_the_arrays(tmp_path):
    img = noisy(dtype="int16")
    write_micrograph(tmp_path / "a.tiff", img)
    back, m = read_micrograph(tmp_path / "a.tiff")
    assert m.source_dtype == "int16" and m.pixel_size is None and m.unit is None
    np.testing.assert_array_equal(back, img)


def test_bigtiff_and_big_endian_and_compressed_tiffs(tmp_path, decode_path):
    img = noisy(dtype="uint16")
    tifffile.imwrite(tmp_path / "big.tif", img, bigtiff=True)
    tifffile.imwrite(tmp_path / "be.tif", img, byteorder=">")
    tifffile.imwrite(tmp_path / "z.tif", img, compression="zlib", predictor=True)
    tifffile.imwrite(tmp_path / "tiles.tif", np.tile(img, (4, 4)), tile=(16, 16), compression="zlib")
    for name in ("big.tif", "be.tif", "z.tif"):
        back, m = read_micrograph(tmp_path / name)
        np.testing.assert_array_equal(back, img)
        assert m.source_dtype == "uint16"
    back, _ = read_micrograph(tmp_path / "tiles.tif")
    np.testing.assert_array_equal(back, np.tile(img, (4, 4)))
    assert read_micrograph_meta(tmp_path / "big.tif").extra["bigtiff"] is True


def test_writer_switches_to_bigtiff_past_4_gib(tmp_path, monkeypatch):
    monkeypatch.setattr(io_write, "_CLASSIC_TIFF_LIMIT", 100)
    img = noisy(dtype="float32")
    write_micrograph(tmp_path / "b.tif", img, MicrographMeta("float32", 2.0, "nm", "", img.shape))
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        assert tif.is_bigtiff and not tif.is_imagej
    back, m = read_micrograph(tmp_path / "b.tif")
    np.testing.assert_array_equal(back, img)
    assert (m.pixel_size, m.unit) == (2.0, "nm")


@pytest.mark.parametrize("unit_written, expect", [("micron", ("um", 0.25)), ("\\u00B5m", ("um", 0.25)),
                                                   ("nm", ("nm", 0.25)), ("A", ("nm", 0.025))])
def test_imagej_pixel_size_units(tmp_path, unit_written, expect):
    img = noisy(dtype="uint16")
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": unit_written, "axes": "YX"})
    _, m = read_micrograph(tmp_path / "ij.tif")
    assert m.unit == expect[0] and m.pixel_size == pytest.approx(expect[1])
    assert m.extra["pixel_size_source"] == "imagej"


def test_resolution_tags_in_cm_and_print_dpi(tmp_path):
    img = noisy(dtype="uint16")
    # 1e8 pixels per cm = 0.1 nm per pixel
    tifffile.imwrite(tmp_path / "cm.tif", img, resolution=(1e8, 1e8), resolutionunit="CENTIMETER", metadata=None)
    _, m = read_micrograph(tmp_path / "cm.tif")
    assert m.unit == "nm" and m.pixel_size == pytest.approx(0.1)
    assert m.pixel_size_in("pm") == pytest.approx(100.0)
    # 72 dpi is a print resolution, not a scan's pixel size
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72, 72), resolutionunit="INCH", metadata=None)
    _, m = read_micrograph(tmp_path / "dpi.tif")
    assert m.pixel_size is None and "72" in m.extra["print_resolution"]
    tifffile.imwrite(tmp_path / "ijdpi.tif", img, imagej=True, resolution=(300, 300),
                     metadata={"unit": "inch", "axes": "YX"})
    _, m = read_micrograph(tmp_path / "ijdpi.tif")
    assert m.pixel_size is None and "300" in m.extra["print_resolution"]


def test_ome_and_fei_pixel_size(tmp_path):
    img = noisy(dtype="uint16")
    tifffile.imwrite(tmp_path / "o.ome.tif", img, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 12.5, "PhysicalSizeXUnit": "pm",
                               "PhysicalSizeY": 12.5, "PhysicalSizeYUnit": "pm"})
    back, m = read_micrograph(tmp_path / "o.ome.tif")
    np.testing.assert_array_equal(back, img)
    assert (m.unit, m.pixel_size, m.extra["pixel_size_source"]) == ("pm", 12.5, "ome")
    fei = "[User]\r\nUser=x\r\n[Scan]\r\nPixelWidth=2.5e-11\r\nPixelHeight=2.5e-11\r\n"
    tifffile.imwrite(tmp_path / "fei.tif", img, extratags=[(34682, "s", 0, fei, True)], metadata=None)
    _, m = read_micrograph(tmp_path / "fei.tif")
    assert m.extra["pixel_size_source"] == "fei"
    assert m.pixel_size_in("pm") == pytest.approx(25.0)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_round_trip_and_phys_pixel_size(tmp_path, dtype):
    img = noisy(dtype=dtype, scale=250.0 if dtype == "uint8" else 60000.0)
    assert cv2.imwrite(str(tmp_path / "g.png"), img)
    back, m = read_micrograph(tmp_path / "g.png")
    np.testing.assert_array_equal(back, img)
    assert m.source_dtype == dtype and m.pixel_size is None
    png_with_phys(tmp_path / "p.png", img, 500_000_000)  # 2 nm per pixel
    back, m = read_micrograph(tmp_path / "p.png")
    np.testing.assert_array_equal(back, img)
    assert m.pixel_size_in("nm") == pytest.approx(2.0)
    png_with_phys(tmp_path / "dpi.png", img, 2835)  # 72 dpi
    _, m = read_micrograph(tmp_path / "dpi.png")
    assert m.pixel_size is None and "print_resolution" in m.extra


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64", "bool"])
def test_npy_round_trip(tmp_path, dtype):
    img = noisy(dtype="float64") > 500 if dtype == "bool" else noisy(dtype=dtype)
    np.save(tmp_path / "a.npy", img)
    back, m = read_micrograph(tmp_path / "a.npy")
    np.testing.assert_array_equal(back, img.astype(np.float32))
    assert m.source_dtype == dtype and m.pixel_size is None
    # written back in the source dtype (bool becomes uint8)
    write_micrograph(tmp_path / "a.tif", back, m)
    again, m2 = read_micrograph(tmp_path / "a.tif")
    np.testing.assert_array_equal(again, back)
    assert m2.source_dtype == ("uint8" if dtype == "bool" else dtype)


def test_npy_fortran_order_and_float16(tmp_path):
    img = np.asfortranarray(noisy(dtype="float32"))
    np.save(tmp_path / "f.npy", img)
    back, _ = read_micrograph(tmp_path / "f.npy")
    np.testing.assert_array_equal(back, img)
    h = noisy(dtype="float16")
    np.save(tmp_path / "h.npy", h)
    back, m = read_micrograph(tmp_path / "h.npy")
    np.testing.assert_array_equal(back, h.astype(np.float32))
    write_micrograph(tmp_path / "h.tif", back, m)
    with tifffile.TiffFile(tmp_path / "h.tif") as tif:
        assert tif.pages[0].dtype == np.float32


def test_content_decides_format_not_the_name(tmp_path):
    img = noisy(dtype="uint8", scale=250)
    ok, buf = cv2.imencode(".png", img)
    (tmp_path / "really_png.tif").write_bytes(buf.tobytes())
    back, m = read_micrograph(tmp_path / "really_png.tif")
    np.testing.assert_array_equal(back, img)
    assert m.extra["format"] == "png"


# ------------------------------------------------------------------------------------------------
# stacks and colour


def _stack(tmp_path: Path) -> tuple[np.ndarray, dict[str, Path]]:
    a = noisy((3, 20, 30), "uint16")
    files = {"plain": tmp_path / "s.tif", "zlib": tmp_path / "sz.tif", "imagej": tmp_path / "sij.tif",
             "pages": tmp_path / "sp.tif", "npy": tmp_path / "s.npy"}
    tifffile.imwrite(files["plain"], a, photometric="minisblack")
    tifffile.imwrite(files["zlib"], a, photometric="minisblack", compression="zlib")
    tifffile.imwrite(files["imagej"], a, imagej=True)
    with tifffile.TiffWriter(files["pages"]) as tw:
        for f in a:
            tw.write(f, photometric="minisblack", compression="zlib", metadata=None)
    np.save(files["npy"], a)
    return a, files


@pytest.fixture(params=["small", "large"])
def decode_path(request, monkeypatch):
    """Run a test both ways: small TIFFs decoded at once, large ones mapped or read page by page."""
    if request.param == "large":
        monkeypatch.setattr(io_tiff, "_STREAM_BYTES", 0)
        monkeypatch.setattr(io_checks, "_STREAM_BYTES", 0)
    return request.param


def test_stack_needs_a_frame_and_reads_the_one_asked(tmp_path, decode_path):
    a, files = _stack(tmp_path)
    for kind, f in files.items():
        with pytest.raises(InputError, match=r"stack of 3 frames.*frame=k"):
            read_micrograph(f)
        for k in range(3):
            back, m = read_micrograph(f, frame=k)
            np.testing.assert_array_equal(back, a[k], err_msg=kind)
            assert m.extra["frame"] == k and m.extra["frames"] == 3 and m.shape == (20, 30)
        for bad in (3, -1, 10):
            with pytest.raises(InputError, match=rf"frame {bad} is out of range.*3 frame"):
                read_micrograph(f, frame=bad)


def test_frame_on_a_single_image(tmp_path):
    img = noisy()
    write_micrograph(tmp_path / "a.tif", img)
    back, _ = read_micrograph(tmp_path / "a.tif", frame=0)
    np.testing.assert_array_equal(back, img)
    with pytest.raises(InputError, match="out of range"):
        read_micrograph(tmp_path / "a.tif", frame=1)
    with pytest.raises(InputError, match="integer"):
        read_micrograph(tmp_path / "a.tif", frame="1")


def test_rgb_is_refused_unless_converted_to_luminance(tmp_path, decode_path):
    rgb = noisy((20, 30, 3), "uint8", scale=250)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], axis=2)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])  # cv2 stores BGR
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    np.save(tmp_path / "rgb.npy", rgb)
    lum = (rgb.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])).astype(np.float32)
    for name in ("rgb.tif", "rgba.tif", "rgb.png", "rgba.png", "rgb.npy"):
        with pytest.raises(InputError, match=r"RGBA? image.*save it as a greyscale image"):
            read_micrograph(tmp_path / name)
        back, m = read_micrograph(tmp_path / name, convert_rgb=True)
        np.testing.assert_allclose(back, lum, rtol=1e-6, err_msg=name)
        assert m.extra["converted_from_rgb"] is True and m.source_dtype == "uint8"


def test_grey_plus_alpha_keeps_the_grey_channel(tmp_path):
    ga = np.stack([noisy((20, 30), "uint16"), np.full((20, 30), 65535, np.uint16)], axis=-1)
    np.save(tmp_path / "ga.npy", ga)
    with pytest.raises(InputError, match="grey\\+alpha image"):
        read_micrograph(tmp_path / "ga.npy")
    back, _ = read_micrograph(tmp_path / "ga.npy", convert_rgb=True)
    np.testing.assert_array_equal(back, ga[..., 0])


def test_pure_red_gives_red_luminance_so_channel_order_is_right(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = np.arange(64, dtype=np.uint8).reshape(8, 8)  # red channel only
    cv2.imwrite(str(tmp_path / "r.png"), img[..., ::-1])
    back, _ = read_micrograph(tmp_path / "r.png", convert_rgb=True)
    np.testing.assert_allclose(back, 0.2126 * img[..., 0], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# bad input: one clear InputError naming the file


def test_missing_empty_folder_and_text_files(tmp_path):
    with pytest.raises(InputError, match=r"nope\.tif: no such file"):
        read_micrograph(tmp_path / "nope.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.tif: is empty"):
        read_micrograph(tmp_path / "empty.tif")
    (tmp_path / "notes.tif").write_text("sample BS3003, 4 MX\n")
    with pytest.raises(InputError, match=r"notes\.tif: is a text file, not a TIFF"):
        read_micrograph(tmp_path / "notes.tif")
    (tmp_path / "noise.npy").write_bytes(bytes(range(200, 256)) * 3)
    with pytest.raises(InputError, match=r"noise\.npy: is not a TIFF, PNG, NPY"):
        read_micrograph(tmp_path / "noise.npy")
    with pytest.raises(InputError, match="is a folder"):
        read_micrograph(tmp_path)


def test_truncated_and_lying_headers(tmp_path):
    img = noisy(dtype="uint16")
    tifffile.imwrite(tmp_path / "full.tif", img)
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match=r"cut\.tif: is truncated"):
        read_micrograph(tmp_path / "cut.tif")
    (tmp_path / "cut2.tif").write_bytes(tiff_bytes(4, 3, np.arange(12, dtype="<u2").tobytes())[:-10])
    with pytest.raises(InputError, match=r"cut2\.tif: is truncated"):
        read_micrograph(tmp_path / "cut2.tif")
    (tmp_path / "head.tif").write_bytes(data[:6])
    with pytest.raises(InputError, match=r"head\.tif: is not a readable TIFF"):
        read_micrograph(tmp_path / "head.tif")
    np.save(tmp_path / "full.npy", img)
    npy = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(npy[:-50])
    with pytest.raises(InputError, match=r"cut\.npy: is truncated"):
        read_micrograph(tmp_path / "cut.npy")
    cv2.imwrite(str(tmp_path / "full.png"), img)
    png = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(InputError, match=r"cut\.png: is a truncated PNG"):
        read_micrograph(tmp_path / "cut.png")


def test_truncated_stacks_and_tiles(tmp_path, decode_path):
    a = noisy((3, 64, 64), "uint16")
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for f in a:
            tw.write(f, photometric="minisblack", compression="zlib", metadata=None)
    tifffile.imwrite(tmp_path / "tiles.tif", a[0], tile=(16, 16), metadata=None)
    for name in ("pages.tif", "tiles.tif"):
        data = (tmp_path / name).read_bytes()
        offsets = []
        with tifffile.TiffFile(tmp_path / name) as tif:
            for page in tif.pages:
                offsets += list(page.dataoffsets)
        cut = max(offsets) + 10  # keep every IFD, lose the end of the last strip or tile
        assert cut < len(data)
        (tmp_path / f"cut_{name}").write_bytes(data[:cut])
        with pytest.raises(InputError, match=rf"cut_{name}: is truncated: image data run to byte"):
            read_micrograph(tmp_path / f"cut_{name}", frame=0 if name == "pages.tif" else None)


def test_undecodable_data(tmp_path, decode_path):
    # LZW and JPEG need the optional imagecodecs package; without it the message says so, with it the damaged
    # LZW stream is reported as undecodable
    (tmp_path / "lzw.tif").write_bytes(tiff_bytes(4, 4, b"\x80" * 40, compression=5))
    try:
        import imagecodecs  # noqa: F401
        expected = r"lzw\.tif: could not decode the image data"
    except ImportError:
        expected = r"lzw\.tif: its compression needs the imagecodecs package"
    with pytest.raises(InputError, match=expected):
        read_micrograph(tmp_path / "lzw.tif")
    (tmp_path / "bad.tif").write_bytes(tiff_bytes(4, 4, b"not a deflate stream", compression=8))
    with pytest.raises(InputError, match=r"bad\.tif: could not decode the image data"):
        read_micrograph(tmp_path / "bad.tif")


def _fails_fast(fn) -> InputError:
    """Run fn, expect InputError, and check it took little time and allocated little memory."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError) as info:
            fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 16 * 2**20, f"allocated {peak} bytes before failing"
    return info.value


def test_huge_declared_size_fails_fast_without_allocating(tmp_path):
    # a header that declares 100000 x 100000 uint16 pixels over 100 bytes of data
    (tmp_path / "huge.tif").write_bytes(tiff_bytes(100_000, 100_000, b"\0" * 100))
    err = _fails_fast(lambda: read_micrograph(tmp_path / "huge.tif"))
    assert "huge.tif" in str(err) and "100000" in str(err)
    # the same lie, with a strip byte count that claims the full size (wrapped to 32 bits)
    (tmp_path / "huge2.tif").write_bytes(tiff_bytes(100_000, 100_000, b"\0" * 100, declared_count=2**32 - 1))
    _fails_fast(lambda: read_micrograph(tmp_path / "huge2.tif"))
    # compressed: more than deflate can pack
    (tmp_path / "huge3.tif").write_bytes(tiff_bytes(100_000, 100_000, zlib.compress(b"\0" * 1000), compression=8))
    _fails_fast(lambda: read_micrograph(tmp_path / "huge3.tif"))
    # PNG whose IHDR declares 60000 x 60000 over a few bytes of IDAT
    ok, buf = cv2.imencode(".png", noisy((4, 4), "uint8", 250))
    raw = bytearray(buf.tobytes())
    ihdr = struct.pack(">II", 60_000, 60_000) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    (tmp_path / "huge.png").write_bytes(bytes(raw))
    err = _fails_fast(lambda: read_micrograph(tmp_path / "huge.png"))
    assert "60000" in str(err)
    # NPY header that declares far more than the file holds
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2), np.float32))
    header["shape"] = (100_000, 100_000)
    with open(tmp_path / "huge.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    _fails_fast(lambda: read_micrograph(tmp_path / "huge.npy"))


def test_honest_but_too_big_for_memory_is_refused(tmp_path, monkeypatch):
    img = noisy(dtype="uint16")
    tifffile.imwrite(tmp_path / "a.tif", img, compression="zlib")
    monkeypatch.setattr(io_tiff, "_STREAM_BYTES", 0)  # small files are otherwise decoded at once
    monkeypatch.setattr(io_checks, "_STREAM_BYTES", 0)  # and not checked against memory
    monkeypatch.setattr(io_checks, "_memory_limit_bytes", lambda: 1000)
    with pytest.raises(InputError, match=r"a\.tif: .*more than this machine's"):
        read_micrograph(tmp_path / "a.tif")


def test_zero_size_complex_and_object_arrays(tmp_path):
    (tmp_path / "zero.tif").write_bytes(tiff_bytes(0, 3))
    with pytest.raises(InputError, match=r"zero\.tif: has zero width or height"):
        read_micrograph(tmp_path / "zero.tif")
    np.save(tmp_path / "zero.npy", np.zeros((0, 5), np.float32))
    with pytest.raises(InputError, match=r"zero\.npy: has zero width or height"):
        read_micrograph(tmp_path / "zero.npy")
    c = (np.arange(16).reshape(4, 4) * (1 + 1j)).astype(np.complex64)
    (tmp_path / "c.tif").write_bytes(tiff_bytes(4, 4, c.tobytes(), bps=64, sample_format=6))
    with pytest.raises(InputError, match=r"c\.tif: has complex pixels"):
        read_micrograph(tmp_path / "c.tif")
    np.save(tmp_path / "c.npy", c)
    with pytest.raises(InputError, match=r"c\.npy: has complex pixels"):
        read_micrograph(tmp_path / "c.npy")
    np.save(tmp_path / "o.npy", np.array([[1, "a"], [None, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"o\.npy: holds Python objects"):
        read_micrograph(tmp_path / "o.npy")
    np.save(tmp_path / "line.npy", np.arange(10.0))
    with pytest.raises(InputError, match=r"line\.npy: holds a 1-D array"):
        read_micrograph(tmp_path / "line.npy")


def test_nan_inf_constant_and_tiny_images(tmp_path):
    img = noisy(dtype="float32")
    img[5, 7] = np.nan
    img[9, 1] = np.inf
    np.save(tmp_path / "nan.npy", img)
    with pytest.raises(InputError, match=r"nan\.npy: has 2 NaN/Inf pixel\(s\) \(first at row 5, column 7\)"):
        read_micrograph(tmp_path / "nan.npy")
    write_micrograph(tmp_path / "const.tif", np.full((16, 16), 7, np.uint16))
    with pytest.raises(InputError, match=r"const\.tif: is constant \(every pixel is 7\)"):
        read_micrograph(tmp_path / "const.tif")
    back, _ = read_micrograph(tmp_path / "const.tif", validate=False)  # masks and maps may be flat
    assert (back == 7).all()
    np.save(tmp_path / "one.npy", np.ones((1, 1), np.float32))
    with pytest.raises(InputError, match=r"one\.npy: is too small: 1 x 1 pixels"):
        read_micrograph(tmp_path / "one.npy")
    write_micrograph(tmp_path / "small.tif", noisy((20, 40)))
    with pytest.raises(InputError, match=r"small\.tif: is too small: 20 x 40 pixels, need at least 64 x 64"):
        read_micrograph(tmp_path / "small.tif", min_size=64)
    read_micrograph(tmp_path / "small.tif", min_size=(16, 32))


def test_validate_image_directly():
    validate_image(noisy())
    with pytest.raises(InputError, match="expected a 2-D image"):
        validate_image(np.zeros((3, 4, 5)))
    with pytest.raises(InputError, match="zero width"):
        validate_image(np.zeros((0, 4)))
    with pytest.raises(InputError, match="complex"):
        validate_image(np.ones((4, 4), np.complex64))
    with pytest.raises(InputError, match=r"^x\.tif: is constant"):
        validate_image(np.zeros((4, 4)), name="x.tif")
    a = noisy((50, 60), "float32")
    a[49, 59] = -np.inf
    with pytest.raises(InputError, match=r"1 NaN/Inf pixel\(s\) \(first at row 49, column 59\)"):
        validate_image(a)


def test_missing_dm_reader_names_the_extra(tmp_path, monkeypatch):
    for name in ("rsciio", "rsciio.digitalmicrograph", "rsciio.emd"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    (tmp_path / "a.dm4").write_bytes(struct.pack(">I", 4) + b"\0" * 60)
    (tmp_path / "a.emd").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 60)
    for name in ("a.dm4", "a.emd"):
        with pytest.raises(InputError, match=r'a\.(dm4|emd): reading .* needs .*pip install "stem-denoise\[dm\]"'):
            read_micrograph(tmp_path / name)


def _fake_rsciio(monkeypatch, signals):
    pkg = types.ModuleType("rsciio")
    dm = types.ModuleType("rsciio.digitalmicrograph")
    calls = []

    def file_reader(filename, **kw):
        calls.append(filename)
        return signals

    dm.file_reader = file_reader
    pkg.digitalmicrograph = dm
    monkeypatch.setitem(sys.modules, "rsciio", pkg)
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", dm)
    return calls


def _axis(name, size, scale, units, index, navigate=False):
    return {"name": name, "size": size, "scale": scale, "offset": 0.0, "units": units,
            "index_in_array": index, "navigate": navigate}


def test_dm_through_rosettasciio_picks_the_haadf_image_and_its_calibration(tmp_path, monkeypatch):
    bf = noisy((16, 24), "float32")
    haadf = noisy((16, 24), "int16")
    spectrum = {"data": np.arange(100.0), "axes": [_axis("Energy loss", 100, 0.1, "eV", 0)],
                "metadata": {"General": {"title": "EELS"}}}
    def image(d, t):
        return {"data": d, "axes": [_axis("y", 16, 0.5, "\u00c5", 0), _axis("x", 24, 0.5, "\u00c5", 1)],
                "metadata": {"General": {"title": t}}}
    calls = _fake_rsciio(monkeypatch, [spectrum, image(bf, "BF"), image(haadf, "HAADF 1")])
    (tmp_path / "a.dm3").write_bytes(struct.pack(">I", 3) + b"\0" * 60)
    back, m = read_micrograph(tmp_path / "a.dm3")
    assert calls == [str(tmp_path / "a.dm3")]
    np.testing.assert_array_equal(back, haadf)
    assert m.source_dtype == "int16" and m.unit == "nm" and m.pixel_size == pytest.approx(0.05)
    assert m.extra["signal_title"] == "HAADF 1" and m.extra["format"] == "dm"


def test_dm_stack_and_uncalibrated_axes(tmp_path, monkeypatch):
    stack = noisy((4, 10, 12), "uint16")
    sig = {"data": stack, "axes": [_axis("t", 4, 1.0, "s", 0, True), _axis("y", 10, 1.0, "1/nm", 1),
                                   _axis("x", 12, 1.0, "1/nm", 2)], "metadata": {}}
    _fake_rsciio(monkeypatch, [sig])
    (tmp_path / "s.dm4").write_bytes(struct.pack(">I", 4) + b"\0" * 60)
    with pytest.raises(InputError, match="stack of 4 frames"):
        read_micrograph(tmp_path / "s.dm4")
    back, m = read_micrograph(tmp_path / "s.dm4", frame=2)
    np.testing.assert_array_equal(back, stack[2])
    assert m.pixel_size is None and m.extra["axis_units"] == "1/nm"
    _fake_rsciio(monkeypatch, [{"data": np.arange(10.0), "axes": [_axis("E", 10, 1.0, "eV", 0)], "metadata": {}}])
    with pytest.raises(InputError, match="holds no 2-D image"):
        read_micrograph(tmp_path / "s.dm4")


# ------------------------------------------------------------------------------------------------
# writing: overwrite protection, atomicity, folders


def test_overwrite_protection(tmp_path):
    a, b = noisy(), noisy()
    write_micrograph(tmp_path / "x.tif", a)
    with pytest.raises(InputError, match=r"x\.tif exists"):
        write_micrograph(tmp_path / "x.tif", b)
    np.testing.assert_array_equal(read_micrograph(tmp_path / "x.tif")[0], a)
    write_micrograph(tmp_path / "x.tif", b, overwrite=True)
    np.testing.assert_array_equal(read_micrograph(tmp_path / "x.tif")[0], b)
    assert no_temp_files(tmp_path)


def test_failure_inside_the_writer_leaves_no_partial_file(tmp_path, monkeypatch):
    old = noisy()
    write_micrograph(tmp_path / "keep.tif", old)

    def broken_imwrite(path, data, **kw):
        Path(path).write_bytes(b"II*\x00partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(InputError, match=r"new\.tif: not enough disk space"):
        write_micrograph(tmp_path / "new.tif", noisy())
    with pytest.raises(InputError):
        write_micrograph(tmp_path / "keep.tif", noisy(), overwrite=True)
    assert not (tmp_path / "new.tif").exists()
    assert no_temp_files(tmp_path)
    np.testing.assert_array_equal(read_micrograph(tmp_path / "keep.tif")[0], old)


def test_streamed_write_matches_and_failure_mid_stream_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(io_write, "_STREAM_BYTES", 0)
    monkeypatch.setattr(io_checks, "_CHUNK_PIXELS", 64)  # many strips
    img = noisy((40, 30), "float32", 60000.0)
    meta = MicrographMeta("uint16", 0.02, "nm", "", img.shape)
    write_micrograph(tmp_path / "s.tif", img, meta)
    back, m = read_micrograph(tmp_path / "s.tif")
    np.testing.assert_array_equal(back, np.clip(np.rint(img), 0, 65535))
    assert (m.source_dtype, m.unit) == ("uint16", "nm") and m.pixel_size == pytest.approx(0.02)
    calls = {"n": 0}
    real = io_write._convert_block

    def fail_on_third(block, dtype, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed mid-way")
        return real(block, dtype, path)

    monkeypatch.setattr(io_write, "_convert_block", fail_on_third)
    with pytest.raises(RuntimeError):
        write_micrograph(tmp_path / "t.tif", img, meta)
    assert not (tmp_path / "t.tif").exists() and no_temp_files(tmp_path)


def test_bad_targets(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="give a .tif or .tiff name"):
        write_micrograph(tmp_path / "a.png", noisy())
    with pytest.raises(InputError, match="2-D"):
        write_micrograph(tmp_path / "a.tif", np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="output folder .* does not exist"):
        write_micrograph(tmp_path / "missing" / "a.tif", noisy())
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="does not exist"):
        write_micrograph(tmp_path / "file" / "a.tif", noisy())
    import stem_denoise.common.atomic as atomic

    monkeypatch.setattr(atomic.os, "access", lambda p, mode: False)
    with pytest.raises(InputError, match="output folder .* is not writable"):
        write_micrograph(tmp_path / "a.tif", noisy())


@pytest.mark.parametrize("dtype", ["uint16", "float64"])
def test_non_square_pixels_round_trip(tmp_path, dtype):
    img = noisy(dtype=dtype)
    meta = MicrographMeta(dtype, 12.0, "pm", "", img.shape, {"pixel_size_y": 15.0})
    write_micrograph(tmp_path / "r.tif", img, meta)
    m = read_micrograph_meta(tmp_path / "r.tif")
    assert (m.pixel_size, m.unit) == (pytest.approx(12.0), "pm")
    assert m.extra["pixel_size_y"] == pytest.approx(15.0)


def test_pixel_size_in_an_odd_unit_is_restated_to_fit_tiff_rationals(tmp_path):
    img = noisy(dtype="uint16")
    write_micrograph(tmp_path / "m.tif", img, MicrographMeta("uint16", 1.5e-11, "m", "", img.shape))
    _, m = read_micrograph(tmp_path / "m.tif")
    assert m.unit == "nm" and m.pixel_size == pytest.approx(0.015)


def test_metadata_helpers():
    assert canonical_length_unit("\u00c5") == ("nm", 0.1)
    assert canonical_length_unit("\u212b") == ("nm", 0.1)
    assert canonical_length_unit("\u03bcm") == ("um", 1.0)
    assert canonical_length_unit("micron") == ("um", 1.0)
    assert canonical_length_unit("pixel") is None and canonical_length_unit(None) is None
    m = MicrographMeta("uint16", 1.5, "nm", "a.tif", (4, 5), {"format": "tiff"})
    assert m.pixel_size_in("pm") == pytest.approx(1500.0)
    assert m.pixel_size_in("um") == pytest.approx(0.0015)
    assert MicrographMeta.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(InputError):
        m.pixel_size_in("parsec")


def test_meta_without_decoding_equals_reads_meta(tmp_path):
    a, files = _stack(tmp_path)
    for f in files.values():
        assert read_micrograph_meta(f, frame=1) == read_micrograph(f, frame=1)[1]
    with pytest.raises(InputError, match="stack"):
        read_micrograph_meta(files["plain"])


# ------------------------------------------------------------------------------------------------
# large images: memmaps


def test_open_memmap_is_read_only_and_equals_the_data(tmp_path):
    img = noisy((40, 50), "uint16")
    meta = MicrographMeta("uint16", 0.1, "nm", "", img.shape)
    write_micrograph(tmp_path / "a.tif", img, meta)
    mm = open_micrograph_memmap(tmp_path / "a.tif")
    assert isinstance(mm, np.memmap) and mm.shape == img.shape and mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, img)
    with pytest.raises((ValueError, TypeError)):
        mm[0, 0] = 1
    release_memmap_pages(mm)
    np.testing.assert_array_equal(mm, img)  # pages come back from the file
    tifffile.imwrite(tmp_path / "be.tif", img, byteorder=">")
    np.testing.assert_array_equal(open_micrograph_memmap(tmp_path / "be.tif"), img)
    tifffile.imwrite(tmp_path / "z.tif", img, compression="zlib")
    assert open_micrograph_memmap(tmp_path / "z.tif") is None
    cv2.imwrite(str(tmp_path / "a.png"), img)
    assert open_micrograph_memmap(tmp_path / "a.png") is None
    np.save(tmp_path / "a.npy", img)
    np.testing.assert_array_equal(open_micrograph_memmap(tmp_path / "a.npy"), img)
    a, files = _stack(tmp_path)
    np.testing.assert_array_equal(open_micrograph_memmap(files["imagej"], frame=2), a[2])
    with pytest.raises(InputError, match="stack"):
        open_micrograph_memmap(files["plain"])
    with pytest.raises(InputError, match="no such file"):
        open_micrograph_memmap(tmp_path / "nope.tif")


def test_releasing_pages_keeps_a_copy_on_write_maps_private_changes(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(4096 * 8, dtype=np.float32).reshape(64, 512))
    cow = np.load(tmp_path / "a.npy", mmap_mode="c")
    cow[:] = -1.0  # private changes, never written to the file
    release_memmap_pages(cow)
    assert float(cow.max()) == -1.0  # not dropped (dropping would bring the file's values back)
    assert float(np.load(tmp_path / "a.npy").max()) > 0


def test_create_output_memmap_appears_only_when_complete(tmp_path):
    img = noisy((30, 40), "float32")
    meta = MicrographMeta("uint16", 0.2, "nm", "", img.shape)
    target = tmp_path / "out.tif"
    with create_output_memmap(target, img.shape, "float32", meta) as out:
        assert isinstance(out, np.memmap) and out.dtype == np.float32
        assert not target.exists()
        out[:15] = img[:15]
        release_memmap_pages(out)
        out[15:] = img[15:]
    back, m = read_micrograph(target)
    np.testing.assert_array_equal(back, img)
    assert m.source_dtype == "float32" and m.pixel_size == pytest.approx(0.2) and m.unit == "nm"
    assert no_temp_files(tmp_path)
    with pytest.raises(InputError, match="exists"):
        with create_output_memmap(target, img.shape):
            pass
    with pytest.raises(KeyError):
        with create_output_memmap(tmp_path / "fail.tif", img.shape) as out:
            out[:] = 1
            raise KeyError("stop")
    assert not (tmp_path / "fail.tif").exists() and no_temp_files(tmp_path)
    with pytest.raises(InputError, match="positive"):
        with create_output_memmap(tmp_path / "e.tif", (0, 5)):
            pass


def test_temporary_memmap_leaves_nothing(tmp_path):
    with temporary_memmap((10, 20), "float32", dir=tmp_path) as acc:
        assert list(tmp_path.iterdir()) == []  # already unlinked
        acc[:] = 3.0
        acc[2, 3] += 1
        assert acc.sum() == 601.0
    assert list(tmp_path.iterdir()) == []


def test_streamed_write_from_a_memmap_source(tmp_path, monkeypatch):
    monkeypatch.setattr(io_write, "_STREAM_BYTES", 0)
    monkeypatch.setattr(io_checks, "_CHUNK_PIXELS", 100)
    img = noisy((64, 48), "float32", 200.0)
    with temporary_memmap(img.shape, "float32", dir=tmp_path) as acc:
        acc[:] = img
        write_micrograph(tmp_path / "o.tif", acc, MicrographMeta("uint8", None, None, "", img.shape))
    back, m = read_micrograph(tmp_path / "o.tif")
    np.testing.assert_array_equal(back, np.rint(img))
    assert m.source_dtype == "uint8"


# ------------------------------------------------------------------------------------------------
# listing


def test_list_micrographs(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("b.tif", "a.TIFF", "c.png", "d.npy", "e.dm4", "f.emd", "g.dm3", "notes.txt", ".hidden.tif"):
        (d / name).write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub" / "z.tif").write_bytes(b"x")
    files = list_micrographs([str(d)])
    assert [f.name for f in files] == ["a.TIFF", "b.tif", "c.png", "d.npy", "e.dm4", "f.emd", "g.dm3"]
    again = list_micrographs([str(d / "c.png"), str(d), str(d / "sub" / "z.tif")])
    assert [f.name for f in again] == ["c.png", "a.TIFF", "b.tif", "d.npy", "e.dm4", "f.emd", "g.dm3", "z.tif"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"empty: folder holds no micrographs"):
        list_micrographs([str(empty)])
    with pytest.raises(InputError, match="no such file or folder"):
        list_micrographs([str(tmp_path / "gone")])
    with pytest.raises(InputError, match="not a micrograph file type"):
        list_micrographs([str(d / "notes.txt")])
    with pytest.raises(InputError, match="no input"):
        list_micrographs([])
    assert list_micrographs(str(d / "c.png")) == [d / "c.png"]
