"""The report's figures, drawn with matplotlib (Agg) and returned as ``data:image/png;base64``
URIs to inline in the HTML.

The funnel bars and the E_hull vs φ_ox scatter are :mod:`htvs.campaign.plots`' figures; the
others are the report's own: histograms of the screened predictions with the thresholds, the
predicted σ(300 K) of every scored structure against P(superionic) with the shortlist cut, and
per validated structure the Li MSD curves and the Arrhenius plot with its fit.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from htvs.campaign.plots import _pyplot, plot_funnel, plot_screening

#: Figure resolution, dots per inch (PNG inlined in the HTML).
DPI = 110
#: Structures drawn with ensemble error bars in the conductivity figure (the best by P(superionic)).
MAX_ERROR_BARS = 150
#: Boltzmann constant, eV/K.
K_B_EV = 8.617333262e-5


def _data_uri(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _saved(draw, *args) -> str:
    """A :mod:`htvs.campaign.plots` figure (written to a path-like) as a data URI."""
    buffer = io.BytesIO()
    draw(*args, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def funnel_figure(funnel: dict[str, Any]) -> str:
    """Horizontal bars of the funnel counts (log scale)."""
    return _saved(plot_funnel, funnel)


def screening_figure(screen) -> str:
    """E_hull vs φ_ox of the screened formulas, survivors highlighted."""
    return _saved(plot_screening, screen)


def _clip_range(values: np.ndarray, marks: list[float]) -> tuple[float, float]:
    """A histogram range holding the central 99 % of ``values`` and every threshold mark."""
    lo, hi = np.percentile(values, [0.5, 99.5])
    lo, hi = min([lo, *marks]), max([hi, *marks])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.03 * (hi - lo)
    return float(lo - pad), float(hi + pad)


def prediction_histograms(panels: list[dict[str, Any]]) -> str:
    """One histogram per panel: ``{"values", "label", "thresholds": [(value, text)], "title"}``;
    values outside the central 99 % are counted in the title rather than drawn."""
    plt = _pyplot()
    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    for ax, panel in zip(axes.flat, panels, strict=False):
        values = np.asarray(panel["values"], dtype=float)
        values = values[np.isfinite(values)]
        marks = [t for t, _ in panel["thresholds"]]
        if values.size == 0:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        else:
            lo, hi = _clip_range(values, marks)
            inside = values[(values >= lo) & (values <= hi)]
            ax.hist(inside, bins=60, range=(lo, hi), color="#3b6ea8", alpha=0.85)
            outside = values.size - inside.size
            note = f", {outside:,} off-scale" if outside else ""
            ax.set_title(f"{panel['title']} ({values.size:,} formulas{note})", fontsize=9)
            ax.set_yscale("log" if values.size > 1000 else "linear")
        for value, text in panel["thresholds"]:
            ax.axvline(value, color="#c0392b", lw=1.4, ls="--")
            ax.text(value, 0.97, f" {text}", color="#c0392b", fontsize=8, va="top", transform=ax.get_xaxis_transform())
        ax.set_xlabel(panel["label"])
        ax.set_ylabel("formulas")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return _data_uri(fig)


def conductivity_figure(frame, min_p_superionic: float | None, validated: set[str]) -> str:
    """Predicted σ(300 K) (mS/cm, log scale) against P(σ ≥ 10⁻⁴ S/cm) of the scored structures,
    with ensemble error bars ``10^(mean ± std)`` for the best :data:`MAX_ERROR_BARS` when the table
    has ``log10_sigma_std``, the shortlist cut (vertical) and 10⁻⁴ S/cm = 0.1 mS/cm (horizontal)."""
    plt = _pyplot()
    frame = frame[frame["log10_sigma_mean"].notna() & frame["p_superionic"].notna()]
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    sigma = 10.0 ** (frame["log10_sigma_mean"].to_numpy(dtype=float) + 3.0)  # S/cm -> mS/cm
    p = frame["p_superionic"].to_numpy(dtype=float)
    ax.scatter(p, sigma, s=6, c="#7f8c8d", label=f"scored ({len(frame):,})", rasterized=True, zorder=2)
    if "log10_sigma_std" in frame and len(frame):
        best = frame.sort_values("p_superionic", ascending=False).head(MAX_ERROR_BARS)
        mean = best["log10_sigma_mean"].to_numpy(dtype=float) + 3.0
        std = np.nan_to_num(best["log10_sigma_std"].to_numpy(dtype=float))
        ax.errorbar(best["p_superionic"], 10.0 ** mean, yerr=[10.0 ** mean - 10.0 ** (mean - std),
                                                             10.0 ** (mean + std) - 10.0 ** mean],
                    fmt="none", ecolor="#2471a3", elinewidth=0.7, alpha=0.35, zorder=1,
                    label=f"ensemble spread (best {len(best):,})")
    if "origin" in frame:
        made = frame["origin"] == "generated"
        if made.any():
            ax.scatter(p[made.to_numpy()], sigma[made.to_numpy()], s=30, marker="^", facecolors="none",
                       edgecolors="#27ae60", label=f"generated ({int(made.sum()):,})", zorder=3)
    if validated:
        done = frame["id"].astype(str).isin(validated).to_numpy()
        ax.scatter(p[done], sigma[done], s=70, facecolors="none", edgecolors="#c0392b", linewidths=1.5,
                   label=f"validated ({int(done.sum())})", zorder=4)
    if min_p_superionic is not None:
        ax.axvline(min_p_superionic, color="#c0392b", lw=1.2, ls="--")
        ax.text(min_p_superionic, 0.02, f" shortlist: P ≥ {min_p_superionic:g}", color="#c0392b", fontsize=8,
                transform=ax.get_xaxis_transform())
    ax.axhline(0.1, color="k", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("P(σ(300 K) ≥ 10⁻⁴ S/cm)")
    ax.set_ylabel("predicted σ(300 K) (mS/cm)")
    ax.set_title("stage 6: conductivity model")
    ax.legend(loc="lower right", fontsize=8)
    fig.set_layout_engine("constrained")
    return _data_uri(fig)


def msd_figure(curves: dict[str, dict[str, Any]], title: str) -> str:
    """Li MSD (Å²) against time (ps), one line per temperature (K)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for temperature in sorted(curves, key=lambda t: float(t)):
        curve = curves[temperature]
        label = f"{float(temperature):g} K"
        if isinstance(curve.get("mean_temperature_K"), int | float):
            label += f" (mean {curve['mean_temperature_K']:.0f} K)"
        ax.plot(curve.get("t_ps", []), curve.get("msd_li_A2", []), lw=1.3, label=label)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("Li MSD (Å²)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.set_layout_engine("constrained")
    return _data_uri(fig)


def arrhenius_figure(diffusivity: dict[str, dict[str, Any]], activation_energy_ev: float | None,
                     title: str) -> str:
    """log10 D (cm²/s) against 1000/T (1/K) with the bootstrap errors, the Arrhenius line of the
    recorded E_a (intercept by least squares) and its extrapolation to 300 K."""
    plt = _pyplot()
    points = sorted((float(t), d.get("mean"), d.get("std")) for t, d in diffusivity.items()
                    if isinstance(d, dict) and isinstance(d.get("mean"), int | float) and d["mean"] > 0)
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    if points:
        temps = np.array([t for t, _, _ in points])
        d = np.array([m for _, m, _ in points])
        std = np.array([s if isinstance(s, int | float) else 0.0 for _, _, s in points])
        x, y = 1000.0 / temps, np.log10(d)
        yerr = np.where(d > 0, std / (d * math.log(10)), 0.0)
        ax.errorbar(x, y, yerr=yerr, fmt="o", color="#2471a3", capsize=3, label="MD")
        if activation_energy_ev is not None and math.isfinite(activation_energy_ev):
            slope = -activation_energy_ev / (K_B_EV * math.log(10) * 1000.0)  # per unit of 1000/T
            intercept = float(np.mean(y - slope * x))
            line_x = np.linspace(x.min(), max(x.max(), 1000.0 / 300.0), 50)
            ax.plot(line_x, intercept + slope * line_x, color="#c0392b", lw=1.2,
                    label=f"fit: E_a = {activation_energy_ev:.3f} eV")
            ax.plot([1000.0 / 300.0], [intercept + slope * 1000.0 / 300.0], marker="*", ms=11, color="#c0392b",
                    ls="none", label="extrapolated to 300 K")
    else:
        ax.text(0.5, 0.5, "no diffusivity recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("1000/T (1/K)")
    ax.set_ylabel("log10 D (cm²/s)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.set_layout_engine("constrained")
    return _data_uri(fig)
