"""Benchmark report files: CSV of every (case, method) row, Markdown tables per dose, figure panels and plots.

Rows of the independent validation set (``row["set"] == "independent"``, :mod:`stem_denoise.evaluation.independent`)
are never
averaged with the others: they get their own tables per dose, headed as such, and their own plots.

Figures use matplotlib with the non-interactive Agg backend; every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from stem_denoise.common.atomic import atomic_write_bytes
from stem_denoise.common.columns import gaussian_lowpass

CSV_COLUMNS = (
    "case", "lattice", "set", "dose", "height", "width", "method", "label", "oracle", "psnr", "ssim", "n_true",
    "n_found", "tp", "fp", "lost", "precision", "recall", "f1", "rmse_px", "rmse_pm", "n_vacancies", "hallucinations",
    "halluc_peak", "halluc_intensity", "vacancy_counts", "in_vacuum", "intensity_corr", "dent_corr", "noise_left",
    "time_s", "mpix_per_s", "s_per_mp", "period_px", "period_source", "hidden_columns", "notes",
)

# (key, header, higher_is_better, format)
TABLE_COLUMNS = (
    ("psnr", "PSNR dB", True, "{:.2f}"),
    ("ssim", "SSIM", True, "{:.3f}"),
    ("f1", "F1", True, "{:.3f}"),
    ("rmse", "RMSE", False, "{:.2f}"),
    ("lost", "lost", False, "{:d}"),
    ("fp", "invented", False, "{:d}"),
    ("in_vacuum", "in vacuum", False, "{:d}"),
    ("halluc", "filled vac.", False, "{}"),
    ("vacancy_counts", "vac. with col. counts", False, "{:d}"),
    ("intensity_corr", "col. int. r", True, "{:.3f}"),
    ("dent_corr", "dent r", True, "{:.3f}"),
    ("noise_left", "noise left", False, "{:.3f}"),
    ("s_per_mp", "s/MP", False, "{:.3g}"),
)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path, dpi: int = 110) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _fmt_csv(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "nan"
        return f"{float(v):.6g}"
    return str(v)


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    """One line per (case, method) with the columns of :data:`CSV_COLUMNS` (missing values empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([_fmt_csv(r[k]) if k in r else "" for k in CSV_COLUMNS])
    atomic_write_bytes(path, buf.getvalue().encode())


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _count_sum(rows: Sequence[dict], key: str) -> int:
    """Sum of a count column over ``rows``, skipping rows where it is missing or not a number."""
    return int(sum(v for v in (_num(r.get(key)) for r in rows) if math.isfinite(v)))


def _nanmean(values) -> float:
    arr = np.array([_num(v) for v in values], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _dose_key(r: dict):
    d = _num(r.get("dose"))
    return d if math.isfinite(d) else None


def aggregate(rows: Sequence[dict]) -> "OrderedDict[str, dict]":
    """Per method (first-seen order): means of PSNR, SSIM, F1, RMSE (pm when every case knows its pixel size,
    else px), correlations; sums of lost, invented (false positives), filled vacancies and vacancies; megapixels
    per second and seconds per megapixel over all its cases (for methods that train on each image, DIP and
    Noise2Void, the time includes the training)."""
    by_method: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    out: "OrderedDict[str, dict]" = OrderedDict()
    for name, rs in by_method.items():
        pm = all(math.isfinite(_num(r.get("rmse_pm"))) for r in rs)
        n_vac = _count_sum(rs, "n_vacancies")
        halls = [_num(r.get("hallucinations")) for r in rs]
        known = [h for h in halls if math.isfinite(h)]
        px = sum(_num(r.get("height")) * _num(r.get("width")) for r in rs)
        t = sum(_num(r.get("time_s")) for r in rs)
        out[name] = {
            "label": rs[0].get("label", name),
            "oracle": bool(rs[0].get("oracle")),
            "psnr": _nanmean(r.get("psnr") for r in rs),
            "ssim": _nanmean(r.get("ssim") for r in rs),
            "f1": _nanmean(r.get("f1") for r in rs),
            "rmse": _nanmean(r.get("rmse_pm" if pm else "rmse_px") for r in rs),
            "rmse_unit": "pm" if pm else "px",
            "lost": _count_sum(rs, "lost"),
            "fp": _count_sum(rs, "fp"),
            "in_vacuum": _count_sum(rs, "in_vacuum"),
            "vacancy_counts": _count_sum(rs, "vacancy_counts"),
            "halluc_n": int(sum(known)) if known else None,
            "n_vacancies": n_vac,
            "halluc_frac": 100.0 * sum(known) / n_vac if known and n_vac else float("nan"),
            "intensity_corr": _nanmean(r.get("intensity_corr") for r in rs),
            "dent_corr": _nanmean(r.get("dent_corr") for r in rs),
            "noise_left": _nanmean(r.get("noise_left") for r in rs),
            "mpix_per_s": px / 1e6 / t if t > 0 else float("inf"),
            "s_per_mp": t / (px / 1e6) if px > 0 else float("nan"),
            "n_cases": len(rs),
        }
    return out


def _cell_value(agg: dict, key: str):
    if key == "halluc":
        return agg["halluc_n"]
    return agg[key]


def _format_table(agg: "OrderedDict[str, dict]") -> list[str]:
    unit = next(iter(agg.values()))["rmse_unit"] if agg else "px"
    headers = ["method", "cases"] + [h if k != "rmse" else f"RMSE {unit}" for k, h, _, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    contenders = [n for n, a in agg.items() if n != "noisy"]  # the input is a reference, never "best"
    best: dict[str, set] = {}
    for key, _, higher, _ in TABLE_COLUMNS:
        vals = {n: _num(_cell_value(agg[n], key)) for n in contenders}
        vals = {n: v for n, v in vals.items() if math.isfinite(v)}
        if not vals:
            best[key] = set()
            continue
        target = max(vals.values()) if higher else min(vals.values())
        best[key] = {n for n, v in vals.items() if v == target}
    for name, a in agg.items():
        label = a["label"] + (" **[oracle]**" if a["oracle"] else "")
        cells = [label, str(a["n_cases"])]
        for key, _, _, fmt in TABLE_COLUMNS:
            v = _cell_value(a, key)
            if key == "halluc":
                text = "n/a" if v is None else f"{v}/{a['n_vacancies']}"
            elif v is None or (isinstance(v, float) and not math.isfinite(v)):
                text = "n/a" if not (isinstance(v, float) and math.isinf(v)) else "inf"
            else:
                text = fmt.format(v)
            cells.append(f"**{text}**" if name in best[key] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _dose_tables(rows: Sequence[dict], heading: str) -> list[str]:
    """One section per dose (``heading`` + the dose), each with its cases and the per-method table."""
    lines: list[str] = []
    by_dose: "OrderedDict[object, list[dict]]" = OrderedDict()
    for r in sorted(rows, key=lambda r: (_dose_key(r) is None, _dose_key(r) or 0.0)):
        by_dose.setdefault(_dose_key(r), []).append(r)
    for dose, rs in by_dose.items():
        cases = sorted({r["case"] for r in rs})
        title = f"## {heading}{dose:g} counts per column peak" if dose is not None else f"## {heading}unknown"
        lines += [title, "", f"Cases: {', '.join(cases)}", ""]
        lines += _format_table(aggregate(rs))
        lines.append("")
    return lines


def _bold_best(values: dict, higher: bool) -> set:
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if not finite:
        return set()
    target = max(finite.values()) if higher else min(finite.values())
    return {k for k, v in finite.items() if v == target}


def psnr_by_dose_table(rows: Sequence[dict]) -> list[str]:
    """Markdown table: one line per method, its mean PSNR (dB) at each dose, then its seconds per megapixel over
    all its cases; the best per column in bold (the noisy input is a reference and never bold)."""
    doses = sorted({d for d in (_dose_key(r) for r in rows) if d is not None})
    methods = list(OrderedDict.fromkeys(r["method"] for r in rows))
    cols: dict[str, dict[str, float]] = {}
    for d in doses:
        cols[f"{d:g}"] = {m: _nanmean(r.get("psnr") for r in rows if r["method"] == m and _dose_key(r) == d)
                          for m in methods}
    speed = {m: aggregate([r for r in rows if r["method"] == m])[m]["s_per_mp"] for m in methods}
    contenders = [m for m in methods if m != "noisy"]
    best = {k: _bold_best({m: v[m] for m in contenders}, True) for k, v in cols.items()}
    best_speed = _bold_best({m: speed[m] for m in contenders}, False)
    lines = ["| method | " + " | ".join(f"dose {k}" for k in cols) + " | s/MP |", "|" + "---|" * (len(cols) + 2)]
    for m in methods:
        first = next(r for r in rows if r["method"] == m)
        label = first.get("label", m) + (" **[oracle]**" if first.get("oracle") else "")
        cells = []
        for k, v in cols.items():
            text = f"{v[m]:.2f}" if math.isfinite(v[m]) else "n/a"
            cells.append(f"**{text}**" if m in best[k] else text)
        sp = f"{speed[m]:.3g}" if math.isfinite(speed[m]) else "n/a"
        cells.append(f"**{sp}**" if m in best_speed else sp)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def versus_table(rows: Sequence[dict], ref: str = "cyclegan") -> list[str]:
    """Markdown table: for every other method, the mean PSNR difference ``ref - method`` (dB) per dose over the
    cases both ran, and on how many of those cases ``ref`` was better; positive = ``ref`` better. Empty when
    ``ref`` has no rows."""
    by = {(r["case"], r["method"]): _num(r.get("psnr")) for r in rows}
    if not any(m == ref for _, m in by):
        return []
    doses = sorted({d for d in (_dose_key(r) for r in rows) if d is not None})
    methods = [m for m in OrderedDict.fromkeys(r["method"] for r in rows) if m not in (ref, "noisy")]
    dose_of = {r["case"]: _dose_key(r) for r in rows}
    ref_label = next(r.get("label", ref) for r in rows if r["method"] == ref)
    lines = [f"| {ref_label} minus ... | " + " | ".join(f"dose {d:g}" for d in doses) + " | cases won |",
             "|" + "---|" * (len(doses) + 2)]
    for m in methods:
        cells, won, total = [], 0, 0
        for d in doses:
            diffs = []
            for case in (c for c, dd in dose_of.items() if dd == d):
                a, b = by.get((case, ref)), by.get((case, m))
                if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
                    diffs.append(a - b)
            won += sum(1 for x in diffs if x > 0)
            total += len(diffs)
            cells.append(f"{np.mean(diffs):+.2f}" if diffs else "n/a")
        label = next(r.get("label", m) for r in rows if r["method"] == m)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {won}/{total} |")
    return lines


def _psnr_by_lattice(rows: Sequence[dict]) -> list[str]:
    """A table of mean PSNR (dB) per method (rows) and lattice kind (columns), over all doses."""
    kinds = list(OrderedDict.fromkeys(str(r.get("lattice", "")) for r in rows))
    methods = list(OrderedDict.fromkeys(r["method"] for r in rows))
    lines = ["| method | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        label = rs[0].get("label", m) + (" **[oracle]**" if rs[0].get("oracle") else "")
        cells = []
        for k in kinds:
            v = _nanmean(r.get("psnr") for r in rs if str(r.get("lattice", "")) == k)
            cells.append(f"{v:.2f}" if math.isfinite(v) else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


INDEPENDENT_INTRO = [
    "## Independent validation set",
    "",
    "Micrographs from a second, separately written simulator (`stem_denoise.evaluation.independent`), so that no",
    "model is judged only on the simulator that trained it: white Poisson + Gaussian read noise with a detector",
    "gain and an offset that the methods are not told (they estimate the noise model), non-Gaussian probes (Gaussian",
    "core with",
    "Lorentzian-like tails, astigmatic, Airy-like ring), a pedestal, thickness ramps and an amorphous speckle",
    "background, and square, hexagonal, honeycomb (unequal sublattices), dumbbell, perovskite (weak B site) and",
    "nanoparticle-in-vacuum lattices (every lattice site in the vacuum is a vacancy site), periods of 6-40 px.",
    "Scored with the same rules as above; never averaged with the simulated set. In the nanoparticle's vacuum the",
    "filled-vacancy rule can only score sites within 1.5 periods of a true column (it compares heights with the",
    "neighbouring columns'); a column painted deeper into the vacuum counts as *invented* and *in vacuum*.",
    "",
]


def _summary_sections(rows: Sequence[dict], prefix: str) -> list[str]:
    lines = [f"## {prefix}PSNR dB by dose (mean over cases) and seconds per megapixel", ""]
    lines += psnr_by_dose_table(rows) + [""]
    vs = versus_table(rows)
    if vs:
        lines += [f"## {prefix}where the CycleGAN stands: its PSNR minus each method's (dB, same cases)", ""]
        lines += vs + [""]
    return lines


def write_markdown(rows: Sequence[dict], path: str | Path, *, skipped: Sequence[str] = (),
                   errors: Sequence[str] = (), config: dict | None = None) -> None:
    """``results.md``: how to read it, one table per dose (means over that dose's cases, best per column in bold,
    the noisy input as reference), the same for the independent validation set (rows with ``set ==
    "independent"``) under its own headings, with its mean PSNR per lattice kind, then every (case, method) row."""
    main_rows = [r for r in rows if r.get("set") != "independent"]
    ind_rows = [r for r in rows if r.get("set") == "independent"]
    lines = ["# Denoising benchmark", ""]
    if main_rows or not ind_rows:
        lines += ["Simulated micrographs with known truth (`data_prep.simulate`)."]
    lines += [
        "Columns are found in every output with the one documented finder",
        "(`stem_denoise.common.columns.find_columns`) and matched to the true columns within period/3.",
        "The true columns are those the finder sees in the noise-free truth (CSV `hidden_columns`: true columns too",
        "faint to be found even there, left out for every method).",
        "*lost*: true columns not found; *invented*: found columns with no true column; *in vacuum*: those of them",
        "farther than one period from every true column (painted into vacuum or an empty region); *filled vac.*:",
        "vacancy sites",
        "where the output shows a column (a finder peak within period/3 AND a height above the local floor more than",
        "halfway to the neighbouring columns'), out of all vacancies (CSV: `halluc_peak`, `halluc_intensity` for",
        "each part alone); *vac. with col. counts*: vacancy sites whose intensity in a disc of radius period/4 is",
        "nearer the neighbouring columns' than the truth's own (on the noisy input: the vacancies its data, read site",
        "by site, cannot tell from a column); *col. int. r*:",
        "correlation of column intensities (disc of radius period/4 at the true positions) with the truth's;",
        "*dent r*: correlation of the one-period low-pass (slow intensity, dents) with the truth's; *s/MP*: seconds",
        "per megapixel of input (training included for the methods that train on each image: DIP, Noise2Void).",
        "Means over the cases of each dose (counts summed). Best per column in **bold**;",
        "the noisy input is the reference and the Gaussian's sigma is chosen with the truth (**oracle**).",
        "",
    ]
    if main_rows:
        lines += _summary_sections(main_rows, "")
    lines += _dose_tables(main_rows, "Dose ")
    if ind_rows:
        lines += INDEPENDENT_INTRO
        lines += _summary_sections(ind_rows, "Independent validation set: ")
        lines += _dose_tables(ind_rows, "Independent validation set, dose ")
        lines += ["## Independent validation set, PSNR dB by lattice kind (mean over doses)", ""]
        lines += _psnr_by_lattice(ind_rows) + [""]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s}" for s in dict.fromkeys(skipped)] + [""]
    if errors:
        lines += ["## Errors", ""] + [f"- {e}" for e in errors] + [""]
    lines += ["## Every case", "", "| case | method | PSNR | SSIM | F1 | RMSE px | lost | invented | in vacuum | "
              "filled vac. | time s | notes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hall = _num(r.get("hallucinations"))
        hall_text = f"{int(hall)}/{int(_num(r.get('n_vacancies')))}" if math.isfinite(hall) else "n/a"
        lines.append(
            f"| {r['case']} | {r['label']} | {_num(r.get('psnr')):.2f} | {_num(r.get('ssim')):.3f} | "
            f"{_num(r.get('f1')):.3f} | {_num(r.get('rmse_px')):.3f} | {r.get('lost', '')} | {r.get('fp', '')} | "
            f"{r.get('in_vacuum', '')} | {hall_text} | {_num(r.get('time_s')):.2f} | {r.get('notes', '')} |")
    lines.append("")
    if config:
        lines += ["## Settings", "", "```", json.dumps(config, indent=1, sort_keys=True, default=str), "```", ""]
    atomic_write_bytes(path, "\n".join(lines).encode())


def dose_plot(rows: Sequence[dict], metric: str, path: str | Path, *, ylabel: str, title: str | None = None) -> None:
    """A line per method of ``metric`` (``"psnr"``, or ``"halluc_frac"``: filled vacancies in % of vacancies)
    against dose (log axis), aggregated over the cases of each dose; cases with unknown dose are left out.
    ``title``: an optional plot title (e.g. which test set)."""
    plt = _mpl()
    doses = sorted({d for d in (_dose_key(r) for r in rows) if d is not None})
    methods = list(OrderedDict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    colours = plt.get_cmap("tab20").colors if len(methods) > 10 else plt.get_cmap("tab10").colors
    for name in methods:
        xs, ys = [], []
        label = name
        for d in doses:
            rs = [r for r in rows if r["method"] == name and _dose_key(r) == d]
            if not rs:
                continue
            a = aggregate(rs)[name]
            label = a["label"] + (" [oracle]" if a["oracle"] else "")
            v = a[metric]
            if v is not None and math.isfinite(v):
                xs.append(d)
                ys.append(v)
        if xs:
            style = "--" if name == "noisy" else "-"
            i = methods.index(name)
            ax.plot(xs, ys, style, marker="osD^v<>ph*"[i % 10], color=colours[i % len(colours)], label=label,
                    alpha=0.85)
    if doses:
        from matplotlib.ticker import NullFormatter, NullLocator

        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(doses)
        ax.set_xticklabels([f"{d:g}" for d in doses])
    ax.set_xlabel("dose (counts at a column peak)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no legend for a plot with nothing drawn (no dose values)
        if len(methods) > 6:  # many methods: the legend beside the axes, not over the lines
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=8, loc="best")
    _save_fig(fig, Path(path))
    plt.close(fig)


def _crop_window(case, size: int = 192) -> tuple[slice, slice]:
    h, w = case.shape
    ch, cw = min(h, size), min(w, size)
    cy, cx = h / 2.0, w / 2.0
    if case.columns is not None and len(case.columns.vacancies):
        v = case.columns.vacancies
        margin = case.period_px
        ok = (v[:, 0] > margin) & (v[:, 0] < h - margin) & (v[:, 1] > margin) & (v[:, 1] < w - margin)
        if np.any(ok):
            v = v[ok]
            k = int(np.argmin((v[:, 0] - cy) ** 2 + (v[:, 1] - cx) ** 2))
            cy, cx = v[k]
    y0 = int(np.clip(round(cy - ch / 2), 0, h - ch))
    x0 = int(np.clip(round(cx - cw / 2), 0, w - cw))
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def _in_window(points: np.ndarray, sl: tuple[slice, slice]) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    ys, xs = sl
    m = (p[:, 0] >= ys.start - 0.5) & (p[:, 0] < ys.stop - 0.5) & (p[:, 1] >= xs.start - 0.5) & (
        p[:, 1] < xs.stop - 0.5)
    return p[m] - np.array([ys.start, xs.start])


def case_panel(case, outputs: dict, matches: dict, rows: Sequence[dict], path: str | Path,
               *, crop: int = 192) -> None:
    """Figure for one case: top row the noisy input, every method's output and the truth (same grey scale, a
    ``crop`` px window around a vacancy near the centre); red circles = vacancies the output fills, yellow crosses
    = true columns it lost, cyan circles on the truth = all vacancies. Bottom row: output minus truth on one
    symmetric scale; under the truth, its one-period low-pass (the dents)."""
    plt = _mpl()
    sl = _crop_window(case, crop)
    names = ["noisy"] + [n for n in outputs if n != "noisy"]
    names = [n for n in names if n in outputs]
    truth = case.truth[sl]
    lo, hi = np.percentile(truth, [0.5, 99.5])
    noisy_resid = (case.noisy[sl] - truth)
    rlim = float(np.percentile(np.abs(noisy_resid), 99)) or 1.0
    by_name = {r["method"]: r for r in rows}
    ncol = len(names) + 1
    fig, axes = plt.subplots(2, ncol, figsize=(2.3 * ncol, 5.0), squeeze=False)
    for j, name in enumerate(names + ["truth"]):
        img = truth if name == "truth" else outputs[name][sl]
        ax = axes[0, j]
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if name == "truth":
            ax.set_title("truth", fontsize=8)
            if case.columns is not None:
                v = _in_window(case.columns.vacancies, sl)
                ax.scatter(v[:, 1], v[:, 0], s=60, facecolors="none", edgecolors="cyan", linewidths=0.8)
        else:
            r = by_name.get(name, {})
            title = r.get("label", name) + (" [oracle]" if r.get("oracle") else "")
            stats = f"{_num(r.get('psnr')):.1f} dB"
            if "hallucinations" in r and math.isfinite(_num(r.get("hallucinations"))):
                stats += f", lost {r.get('lost')}, filled {int(_num(r['hallucinations']))}/{r.get('n_vacancies')}"
            ax.set_title(f"{title}\n{stats}", fontsize=7)
            m = matches.get(name)
            if m is not None:
                hv = _in_window(m.hallucinated, sl)
                ax.scatter(hv[:, 1], hv[:, 0], s=70, facecolors="none", edgecolors="red", linewidths=1.0)
                lp = _in_window(m.lost, sl)
                ax.scatter(lp[:, 1], lp[:, 0], s=30, marker="x", c="yellow", linewidths=1.0)
        resid_ax = axes[1, j]
        if name == "truth":
            slow = gaussian_lowpass(case.truth, case.period_px)[sl]
            resid_ax.imshow(slow, cmap="gray", interpolation="nearest")
            resid_ax.set_xlabel("truth low-pass (dents)", fontsize=7)
            axes[1, 0].set_ylabel("output - truth", fontsize=8)
        else:
            resid_ax.imshow(outputs[name][sl] - truth, cmap="RdBu_r", vmin=-rlim, vmax=rlim, interpolation="nearest")
        for ax_ in (ax, resid_ax):
            ax_.set_xticks([])
            ax_.set_yticks([])
            ax_.set_xlim(-0.5, truth.shape[1] - 0.5)
            ax_.set_ylim(truth.shape[0] - 0.5, -0.5)
    dose = f"dose {case.dose:g}" if case.dose is not None else "dose unknown"
    ys, xs = sl
    fig.suptitle(f"{case.name}: {case.lattice} {dose}, {case.shape[0]}x{case.shape[1]} px, window rows "
                 f"{ys.start}-{ys.stop}, cols {xs.start}-{xs.stop}", fontsize=9)
    fig.tight_layout(h_pad=0.8)
    _save_fig(fig, Path(path))
    plt.close(fig)
