"""Where the shared real STEM frames are (beside the repository, never copied into it) and how tests read them."""
from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"
REAL_FRAMES = ("SrTiO3-100_remworkflows.tif", "DyScO3_atomsegnet.tif", "Si110_atomsegnet.tif",
               "perovskite-interface_scifidatasets.tif")
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"shared real frames not found at {REAL}")


def read_real(name: str):
    """(image, meta) of one shared real frame; the test is skipped, saying so, when the file is absent."""
    from data_prep.io import read_micrograph

    path = REAL / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    return read_micrograph(path)
