"""Image and atom-column metrics of a denoised micrograph against its noise-free truth.

All functions take numpy arrays in the micrograph's own intensity units (the output and the truth in the same units)
and positions as ``(row, col)`` pixels. Columns in the output are found with the project's one documented finder,
:func:`stem_denoise.common.columns.find_columns`, and paired with the true columns by
:func:`stem_denoise.common.columns.match_columns` within
``max_dist = period / 3`` pixels.

Rules (what each number means):

* **PSNR** (dB) against the truth with ``data_range = truth.max() - truth.min()``; an exact output scores
  :data:`PSNR_CAP_DB` (100 dB) instead of infinity so tables and plots stay finite. **SSIM** from scikit-image with
  the same data range.
* **Column detection.** Only columns at least half a period inside the image are scored (a column cut by the border
  is neither lost nor invented). A true interior column paired with a found one is a hit; an interior true column
  without a partner is **lost**; an interior found column without a partner is a false positive (*invented*); one
  farther than one period from every true column is also counted **in vacuum** (a column painted into the vacuum
  around a nanoparticle or into any empty region). Precision, recall, F1 follow; **RMSE** is the root-mean-square
  distance of the pairs, in px and in pm when the pixel size is known.
* **Hallucinations**: a vacancy site (a lattice site with no column in the truth, at least half a period inside
  the image) *shows a column* in the output when BOTH (a) the finder detects a column within ``max_dist`` of it
  and (b) the site's height above the local background floor (the finder's ``detail`` map averaged in a disc of
  radius period/4) is more than halfway from the truth's own height at that site to the mean height of the true
  columns within 1.5 periods (a site with no true column that near, such as one in the vacuum around a
  nanoparticle: the median height of all true columns), both heights measured in the output itself (so gain,
  offset and dents cancel).
  (a) alone would count the small noise bumps a low-dose image has everywhere (the finder is sensitive enough
  to find a weak perovskite B column in a dent); (b) alone would count a broad smear. Each part is reported too:
  ``halluc_peak`` (a) and ``halluc_intensity`` (b). The Bragg filter, which averages the lattice over many cells,
  fills vacancies under both; a faithful denoiser fills none. Without the images only (a) can be applied.
  **Vacancy counts** (CSV ``vacancy_counts``): vacancy sites whose intensity in a disc of radius period/4 is nearer
  the neighbouring true columns' than the truth's own value there; on the noisy input this is how many vacancies the
  data, read site by site, cannot tell from a column (the floor a site-by-site reader meets).
* **Column intensity fidelity**: Pearson correlation between output and truth of the intensity integrated in a disc
  of radius period/4 around every TRUE interior column position (heavier/lighter columns, dents).
* **Dent fidelity**: Pearson correlation of the Gaussian low-pass (sigma = one period) of output and truth, over the
  image minus a one-period border: the slow intensity (dents, thickness ramps) must survive denoising.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.metrics import structural_similarity

from stem_denoise.common.columns import column_contrast, find_columns, gaussian_lowpass, match_columns
from stem_denoise.common.errors import InputError

PSNR_CAP_DB = 100.0
MATCH_FRAC = 1.0 / 3.0  # max matching distance, in periods
DISC_FRAC = 0.25  # radius of the integration disc, in periods
MARGIN_FRAC = 0.5  # border margin for column scoring, in periods
VACUUM_FRAC = 1.0  # an invented column farther than this (periods) from every true column is "in vacuum"


@dataclass
class ColumnTruth:
    """Known columns of a simulated micrograph: ``columns`` (N,2) present, ``vacancies`` (M,2) empty lattice sites,
    ``period_px`` nearest-neighbour spacing (px), optional ``pixel_size_pm``, ``heavy``/``light`` index arrays."""

    columns: np.ndarray
    vacancies: np.ndarray
    period_px: float
    pixel_size_pm: float | None = None
    heavy: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    light: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self):
        self.columns = np.asarray(self.columns, dtype=np.float64).reshape(-1, 2)
        self.vacancies = np.asarray(self.vacancies, dtype=np.float64).reshape(-1, 2)
        self.heavy = np.asarray(self.heavy, dtype=np.int64).reshape(-1)
        self.light = np.asarray(self.light, dtype=np.int64).reshape(-1)
        if not np.isfinite(self.period_px) or self.period_px < 3:
            raise InputError(f"period_px must be >= 3 px, got {self.period_px}")
        if self.pixel_size_pm is not None and not (np.isfinite(self.pixel_size_pm) and self.pixel_size_pm > 0):
            raise InputError(f"pixel_size_pm must be > 0, got {self.pixel_size_pm}")


def visible_columns(truth_image: np.ndarray, truth_cols: ColumnTruth) -> tuple[ColumnTruth, int]:
    """Restrict ``truth_cols`` to the columns the finder detects in the noise-free ``truth_image`` itself.

    A column too faint to be found even without noise (e.g. a light column of a weak sublattice deep in a dent)
    cannot be asked of any denoiser; scoring against the visible columns makes a perfect output score perfectly.
    Returns ``(restricted ColumnTruth, number of columns left out)``.
    """
    found = find_columns(np.asarray(truth_image, dtype=np.float64), truth_cols.period_px)
    _, ti, _ = match_columns(found, truth_cols.columns, MATCH_FRAC * truth_cols.period_px)
    keep = np.zeros(len(truth_cols.columns), dtype=bool)
    keep[ti] = True
    new_index = np.cumsum(keep) - 1

    def remap(idx):
        idx = idx[keep[idx]] if len(idx) else idx
        return new_index[idx]

    restricted = ColumnTruth(truth_cols.columns[keep], truth_cols.vacancies, truth_cols.period_px,
                             truth_cols.pixel_size_pm, remap(truth_cols.heavy), remap(truth_cols.light))
    return restricted, int(np.sum(~keep))


def _pair(output: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.asarray(output, dtype=np.float64)
    ref = np.asarray(truth, dtype=np.float64)
    if out.shape != ref.shape or out.ndim != 2:
        raise InputError(f"output {out.shape} and truth {ref.shape} must be 2-D images of the same shape")
    if not np.all(np.isfinite(out)):
        raise InputError("output contains NaN or Inf")
    return out, ref


def _data_range(ref: np.ndarray, data_range: float | None) -> float:
    rng = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    if not rng > 0:
        raise InputError("truth is constant: data range is zero")
    return rng


def psnr_from_mse(mse: float, data_range: float) -> float:
    """PSNR (dB) from a mean squared error and a data range, capped at :data:`PSNR_CAP_DB` (also when mse is 0)."""
    if not mse > 0:
        return PSNR_CAP_DB
    return float(min(PSNR_CAP_DB, 10.0 * np.log10(float(data_range) ** 2 / float(mse))))


def psnr(output: np.ndarray, truth: np.ndarray, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of ``output`` against ``truth``; data range from the truth; capped at 100."""
    out, ref = _pair(output, truth)
    return psnr_from_mse(float(np.mean((out - ref) ** 2)), _data_range(ref, data_range))


def ssim(output: np.ndarray, truth: np.ndarray, *, data_range: float | None = None) -> float:
    """Structural similarity (scikit-image, 7x7 window) of ``output`` against ``truth``; data range from the truth."""
    out, ref = _pair(output, truth)
    rng = _data_range(ref, data_range)
    return float(structural_similarity(ref, out, data_range=rng))


def _disc_offsets(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = dy * dy + dx * dx <= radius * radius
    return np.stack([dy[inside], dx[inside]], axis=1).astype(np.float64)


def disc_sums(image: np.ndarray, positions: np.ndarray, radius: float) -> np.ndarray:
    """Sum of ``image`` (bilinear samples on a unit grid) in a disc of ``radius`` px around each ``(row, col)``.

    Returns a float (N,) array in image units x pixels. Samples beyond the border take the nearest edge value.
    """
    img = np.asarray(image, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if len(pos) == 0:
        return np.zeros(0)
    off = _disc_offsets(max(0.5, float(radius)))
    coords = pos[:, None, :] + off[None, :, :]  # (N, K, 2)
    vals = ndimage.map_coordinates(img, [coords[..., 0].ravel(), coords[..., 1].ravel()], order=1, mode="nearest")
    return vals.reshape(len(pos), len(off)).sum(axis=1)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    if den <= 0:
        return float("nan")
    return float(np.sum(a * b) / den)


def _interior(points: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return ((p[:, 0] >= margin) & (p[:, 0] <= shape[0] - 1 - margin)
            & (p[:, 1] >= margin) & (p[:, 1] <= shape[1] - 1 - margin))


def intensity_fidelity(output: np.ndarray, truth: np.ndarray, columns: np.ndarray, period_px: float) -> float:
    """Pearson correlation of disc-integrated intensities (radius period/4) at the TRUE columns, output vs truth."""
    out, ref = _pair(output, truth)
    cols = np.asarray(columns, dtype=np.float64).reshape(-1, 2)
    cols = cols[_interior(cols, ref.shape, MARGIN_FRAC * period_px)]
    r = DISC_FRAC * period_px
    return _corr(disc_sums(out, cols, r), disc_sums(ref, cols, r))


def dent_fidelity(output: np.ndarray, truth: np.ndarray, period_px: float) -> float:
    """Pearson correlation of the one-period Gaussian low-pass of output and truth (slow intensity: dents)."""
    out, ref = _pair(output, truth)
    lo = gaussian_lowpass(out, period_px)
    lt = gaussian_lowpass(ref, period_px)
    m = int(round(period_px))
    if min(ref.shape) > 4 * m:
        lo, lt = lo[m:-m, m:-m], lt[m:-m, m:-m]
    return _corr(lo, lt)


def _site_heights(detail: np.ndarray, period_px: float, sites: np.ndarray) -> np.ndarray:
    r = DISC_FRAC * period_px
    return disc_sums(detail, sites, r) / len(_disc_offsets(max(0.5, r)))


def filled_vacancies_by_intensity(output: np.ndarray, truth: np.ndarray, columns: np.ndarray,
                                  vacancies: np.ndarray, period_px: float) -> np.ndarray:
    """Boolean (M,) mask of vacancy sites the output fills under the intensity rule (see module docstring)."""
    out, ref = _pair(output, truth)
    cols = np.asarray(columns, dtype=np.float64).reshape(-1, 2)
    vac = np.asarray(vacancies, dtype=np.float64).reshape(-1, 2)
    if len(vac) == 0 or len(cols) == 0:
        return np.zeros(len(vac), dtype=bool)
    _, d_out = column_contrast(out, period_px)
    _, d_ref = column_contrast(ref, period_px)
    near_vac = np.unique(np.concatenate([nb for nb in cKDTree(cols).query_ball_point(vac, 1.5 * period_px)]
                                        + [np.zeros(0, dtype=np.int64)]).astype(np.int64))
    neighbours = cKDTree(cols[near_vac]).query_ball_point(vac, 1.5 * period_px) if len(near_vac) else \
        [[] for _ in range(len(vac))]
    h_out_cols = _site_heights(d_out, period_px, cols[near_vac])
    h_ref_cols = _site_heights(d_ref, period_px, cols[near_vac])
    h_out_vac = _site_heights(d_out, period_px, vac)
    h_ref_vac = _site_heights(d_ref, period_px, vac)
    filled = np.zeros(len(vac), dtype=bool)
    if not all(neighbours):  # a site with no true column within 1.5 periods (vacuum): the columns' median height
        all_out = float(np.median(_site_heights(d_out, period_px, cols)))
        all_ref = float(np.median(_site_heights(d_ref, period_px, cols)))
    for k, nb in enumerate(neighbours):
        if nb:
            col_out = float(np.mean(h_out_cols[nb]))
            col_ref = float(np.mean(h_ref_cols[nb]))
        else:
            col_out, col_ref = all_out, all_ref
        if col_ref <= 0 or col_out <= 0:
            continue
        vac_level_rel = h_ref_vac[k] / col_ref  # the truth's own level at this empty site, relative to columns
        filled[k] = h_out_vac[k] / col_out > 0.5 * (vac_level_rel + 1.0)
    return filled


def vacancies_with_column_counts(output: np.ndarray, truth: np.ndarray, columns: np.ndarray,
                                 vacancies: np.ndarray, period_px: float) -> np.ndarray:
    """Boolean (M,) mask of vacancy sites whose intensity in a disc of radius period/4 (the output's own units, which
    must be the truth's) is nearer the true columns' within 1.5 periods than the truth's own value at that empty site
    (above the midpoint). On the noisy input it counts the vacancies that the data alone, read site by site, cannot
    tell from a column; a denoiser that reads each site's evidence fills about that many. Sites with no true column
    within 1.5 periods are not scored (False)."""
    out, ref = _pair(output, truth)
    cols = np.asarray(columns, dtype=np.float64).reshape(-1, 2)
    vac = np.asarray(vacancies, dtype=np.float64).reshape(-1, 2)
    result = np.zeros(len(vac), dtype=bool)
    if len(vac) == 0 or len(cols) == 0:
        return result
    r = DISC_FRAC * period_px
    neighbours = cKDTree(cols).query_ball_point(vac, 1.5 * period_px)
    near = np.unique(np.concatenate([np.asarray(nb, dtype=np.int64) for nb in neighbours] + [np.zeros(0, np.int64)]))
    ref_cols = np.zeros(len(cols))
    if len(near):
        ref_cols[near] = disc_sums(ref, cols[near], r)
    out_vac = disc_sums(out, vac, r)
    ref_vac = disc_sums(ref, vac, r)
    for k, nb in enumerate(neighbours):
        if nb:
            result[k] = out_vac[k] > 0.5 * (ref_vac[k] + float(np.mean(ref_cols[nb])))
    return result


@dataclass
class ColumnMatch:
    """Where the found columns of one output stand against the truth (positions (row, col) px).

    ``pairs_found``/``pairs_truth``/``dist``: matched pairs with an interior true column; ``lost``: interior true
    columns without a partner; ``false_pos``: interior found columns without a partner; ``in_vacuum``: those of them
    farther than one period from every true column; ``hallucinated``: interior
    vacancy sites that show a column; ``vacancies``: all interior vacancy sites; ``vacancy_peak`` /
    ``vacancy_filled``: per vacancy, the peak and the intensity part of the rule (``vacancy_filled`` None when
    the images were not given).
    """

    found: np.ndarray
    pairs_found: np.ndarray
    pairs_truth: np.ndarray
    dist: np.ndarray
    lost: np.ndarray
    false_pos: np.ndarray
    hallucinated: np.ndarray
    vacancies: np.ndarray
    n_true: int
    n_found: int
    vacancy_peak: np.ndarray | None = None
    in_vacuum: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    vacancy_filled: np.ndarray | None = None


def match_to_truth(found: np.ndarray, truth_cols: ColumnTruth, shape: tuple[int, int],
                   max_dist: float | None = None, *, output: np.ndarray | None = None,
                   truth_image: np.ndarray | None = None) -> ColumnMatch:
    """Pair ``found`` columns with the true ones and list the lost, invented and hallucinated ones (module rules).

    With ``output`` and ``truth_image`` a vacancy is hallucinated under the full two-part rule; without them
    under the peak part only.
    """
    period = float(truth_cols.period_px)
    md = MATCH_FRAC * period if max_dist is None else float(max_dist)
    margin = MARGIN_FRAC * period
    found = np.asarray(found, dtype=np.float64).reshape(-1, 2)
    cols = truth_cols.columns
    fi, ti, dist = match_columns(found, cols, md)
    truth_in = _interior(cols, shape, margin)
    found_in = _interior(found, shape, margin)
    hit = truth_in[ti]
    matched_truth = np.zeros(len(cols), dtype=bool)
    matched_truth[ti] = True
    matched_found = np.zeros(len(found), dtype=bool)
    matched_found[fi] = True
    vac = truth_cols.vacancies[_interior(truth_cols.vacancies, shape, margin)]
    if len(vac) and len(found):
        d_vac, _ = cKDTree(found).query(vac)
        peak = d_vac <= md
    else:
        peak = np.zeros(len(vac), dtype=bool)
    if output is not None and truth_image is not None:
        filled = filled_vacancies_by_intensity(output, truth_image, cols, vac, period)
    else:
        filled = None
    false_pos = found[found_in & ~matched_found]
    if len(cols) and len(false_pos):
        far = cKDTree(cols).query(false_pos)[0] > VACUUM_FRAC * period
    else:
        far = np.ones(len(false_pos), dtype=bool)
    return ColumnMatch(
        found=found, pairs_found=fi[hit], pairs_truth=ti[hit], dist=dist[hit],
        lost=cols[truth_in & ~matched_truth], false_pos=false_pos, in_vacuum=false_pos[far],
        hallucinated=vac[peak & filled] if filled is not None else vac[peak], vacancies=vac,
        n_true=int(np.sum(truth_in)), n_found=int(np.sum(found_in)), vacancy_peak=peak, vacancy_filled=filled,
    )


def column_metrics(output: np.ndarray, truth_cols: ColumnTruth, *, found: np.ndarray | None = None,
                   truth_image: np.ndarray | None = None, max_dist: float | None = None,
                   match: ColumnMatch | None = None) -> dict:
    """Column detection scores of ``output`` (see the module docstring for the rules).

    Returns a dict: ``n_true, n_found, tp, fp, lost, precision, recall, f1, rmse_px, rmse_pm, n_vacancies,
    hallucinations, halluc_peak`` and, when ``truth_image`` is given, ``halluc_intensity`` (and
    ``hallucinations`` uses the two-part rule). ``found`` may pass positions already found in ``output`` (px),
    ``match`` an already computed :func:`match_to_truth`; otherwise :func:`stem_denoise.common.columns.find_columns`
    finds them.
    """
    out = np.asarray(output, dtype=np.float64)
    period = float(truth_cols.period_px)
    if match is None:
        if found is None:
            found = find_columns(out, period)
        match = match_to_truth(found, truth_cols, out.shape, max_dist, output=out if truth_image is not None
                               else None, truth_image=truth_image)
    tp = len(match.pairs_truth)
    lost = len(match.lost)
    fp = len(match.false_pos)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + lost) if tp + lost else float("nan")
    f1 = 2 * tp / (2 * tp + fp + lost) if tp + fp + lost else float("nan")
    rmse_px = float(np.sqrt(np.mean(match.dist ** 2))) if tp else float("nan")
    rmse_pm = rmse_px * truth_cols.pixel_size_pm if truth_cols.pixel_size_pm else float("nan")
    result = {
        "n_true": match.n_true, "n_found": match.n_found, "tp": tp, "fp": fp, "lost": lost,
        "precision": precision, "recall": recall, "f1": f1, "rmse_px": rmse_px, "rmse_pm": rmse_pm,
        "n_vacancies": int(len(match.vacancies)), "hallucinations": int(len(match.hallucinated)),
        "halluc_peak": int(np.sum(match.vacancy_peak)) if match.vacancy_peak is not None else 0,
        "in_vacuum": int(len(match.in_vacuum)),
    }
    if truth_image is not None:
        result["vacancy_counts"] = int(np.sum(vacancies_with_column_counts(
            out, truth_image, truth_cols.columns, match.vacancies, period)))
    if match.vacancy_filled is not None:
        result["halluc_intensity"] = int(np.sum(match.vacancy_filled))
    elif truth_image is not None:
        result["halluc_intensity"] = int(np.sum(
            filled_vacancies_by_intensity(out, truth_image, truth_cols.columns, match.vacancies, period)))
    return result


def noise_left(output: np.ndarray, truth: np.ndarray, noisy: np.ndarray) -> float:
    """How much of the input's noise realisation the output still carries: the regression slope of the output's
    error ``output - truth`` on the input's noise ``noisy - truth`` (1 for the identity, 0 when the output holds no
    trace of this particular noise). A CycleGAN that hides the noise in its output so that a deterministic F can
    restore it (the classic objective's "steganography") keeps a high value even when it looks clean."""
    out, ref = _pair(output, truth)
    n = np.asarray(noisy, dtype=np.float64) - ref
    e = out - ref
    n = n - n.mean()
    var = float((n * n).mean())
    if var <= 0:
        return float("nan")
    return float(((e - e.mean()) * n).mean() / var)


def evaluate(output: np.ndarray, truth: np.ndarray, truth_cols: ColumnTruth | None,
             *, match: ColumnMatch | None = None, noisy: np.ndarray | None = None) -> dict:
    """All metrics of one output against its truth image and (when known) its true columns, as one flat dict.

    Keys: ``psnr, ssim`` and, with ``truth_cols``: the :func:`column_metrics` keys, ``intensity_corr``,
    ``dent_corr``; with ``noisy``: ``noise_left`` (:func:`noise_left`). Without column truth the column keys are
    absent. ``match`` may pass a precomputed :func:`match_to_truth` of this output.
    """
    out, ref = _pair(output, truth)
    result = {"psnr": psnr(out, ref), "ssim": ssim(out, ref)}
    if noisy is not None:
        result["noise_left"] = noise_left(out, ref, noisy)
    if truth_cols is not None:
        result.update(column_metrics(out, truth_cols, truth_image=ref, match=match))
        result["intensity_corr"] = intensity_fidelity(out, ref, truth_cols.columns, truth_cols.period_px)
        result["dent_corr"] = dent_fidelity(out, ref, truth_cols.period_px)
    return result
