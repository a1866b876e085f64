"""Reading and writing micrographs: TIFF, PNG, NPY, and DM3/DM4/EMD through RosettaSciIO.

Every reader returns the pixels as a 2-D float32 array in the file's own units (detector counts, or
whatever the file holds; nothing is rescaled) together with a :class:`MicrographMeta` that records the
source dtype, the pixel size and its unit. :func:`write_micrograph` writes a TIFF back in the source
dtype (rounded and clipped for integer types) or in float32, with the pixel size in the resolution tags
and in the ImageJ metadata so that Fiji shows it, atomically and never over an existing file unless asked.

Every problem a user can fix (a missing, empty, truncated or foreign file, an RGB image or a stack
without a choice, NaN or constant pixels, a header that declares more pixels than the file holds) raises
:class:`stem_denoise.common.errors.InputError` with one line that names the file.

Large micrographs (a 16384 x 16384 float32 image is 1 GiB) are handled without holding them twice:

* :func:`open_micrograph_memmap` maps an uncompressed TIFF or an NPY file read-only (``None`` when the
  file cannot be mapped: compressed, tiled, PNG, DM); read tiles from it and convert each to float32.
* :func:`create_output_memmap` is a context manager that creates an output TIFF as a writable memmap in a
  temporary file next to the target and renames it onto the target when the block ends without error.
* :func:`temporary_memmap` gives an anonymous scratch array on disk (e.g. a float32 accumulator) that is
  gone when the block ends, even if the process is killed.
* :func:`write_micrograph` converts and writes in row strips, so writing a 1 GiB float32 memmap as
  uint16 allocates only a strip at a time.
* :func:`release_memmap_pages` drops the pages of a memmap from the process's resident set (they stay in
  the page cache). Pages of a file mapping count in the resident set size (``ru_maxrss``) while mapped;
  call it every few hundred MiB of rows when streaming through a huge file to keep the peak bounded.

A typical streaming use (the tile and the accumulation are the caller's business)::

    src = open_micrograph_memmap(path)            # None -> fall back to read_micrograph(path)
    meta = read_micrograph_meta(path)
    with create_output_memmap(out_path, src.shape, "float32", meta) as out:
        for r in range(0, src.shape[0], 1024):
            out[r:r + 1024] = process(np.asarray(src[r:r + 1024], dtype=np.float32))
            release_memmap_pages(src); release_memmap_pages(out)

Readers for DM3/DM4/EMD need the optional extra ``pip install "stem-denoise[dm]"`` (RosettaSciIO, GPL-3,
never a requirement; and h5py, which Velox EMD files need); a missing piece is named in the error. Files are
recognised by their first bytes, not only their name.

Pixel sizes are believed only when finite, positive and between 0.1 pm and 1 mm (:func:`plausible_pixel_size`);
others are dropped with a one-line :class:`~stem_denoise.common.errors.MetadataWarning` and never written back.

Modules: :mod:`.meta` (MicrographMeta, length units, pixel sizes), :mod:`.checks` (validation, memory and size
checks, memmap pages), :mod:`.probe` (format recognition), one module per format (:mod:`.tiff`, :mod:`.png`,
:mod:`.npy`, :mod:`.instrument` for DM/EMD), :mod:`.read`, :mod:`.write` and :mod:`.listing`. Import the public
names from ``data_prep.io`` itself.
"""
from __future__ import annotations

from data_prep.io.checks import is_memmap, release_memmap_pages, validate_image
from data_prep.io.listing import MICROGRAPH_SUFFIXES, list_micrographs
from data_prep.io.meta import PIXEL_SIZE_RANGE_M, MicrographMeta, canonical_length_unit, plausible_pixel_size
from data_prep.io.read import open_micrograph_memmap, read_micrograph, read_micrograph_meta
from data_prep.io.write import create_output_memmap, temporary_memmap, write_micrograph

__all__ = [
    "MICROGRAPH_SUFFIXES",
    "MicrographMeta",
    "read_micrograph",
    "read_micrograph_meta",
    "write_micrograph",
    "list_micrographs",
    "validate_image",
    "open_micrograph_memmap",
    "create_output_memmap",
    "temporary_memmap",
    "release_memmap_pages",
    "is_memmap",
    "canonical_length_unit",
    "plausible_pixel_size",
    "PIXEL_SIZE_RANGE_M",
]
