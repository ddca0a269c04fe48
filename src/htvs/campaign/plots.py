"""Figures of a finished campaign's output folder (``htvs campaign plot``).

Reads only the files ``htvs campaign run`` writes to its ``--out`` folder, so it works on a
campaign run anywhere (copy the folder back from the cluster, or point at a local run):

* ``funnel.png``: the count after every funnel step (``funnel.json``), log scale;
* ``screening.png``: E_hull (eV/atom) against the oxidation limit phi_ox (V vs Li/Li+) of every
  screened formula (``screen.parquet``), survivors of the composition screen highlighted;
* ``conductivity.png``: predicted log10 sigma(300 K) (S/cm) against P(sigma >= 1e-4 S/cm) of every
  scored structure (``conductivity.parquet``), the shortlist highlighted, generated structures
  (stage 5, ``origin`` "generated") and validated ones marked.

A figure whose input is missing (a campaign stopped before that step) is skipped and reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from htvs.atomic import output_folder
from htvs.errors import InvalidInput

@dataclass
class PlotResult:
    """What :func:`plot_campaign` wrote and what it skipped (with the reason)."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _read_parquet(path: Path, columns: list[str]):
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types on a broken file
        raise InvalidInput(f"{path}: not a readable Parquet table ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def plot_funnel(funnel: dict, path: Path) -> Path:
    """Horizontal bars of the funnel counts, first step at the top."""
    plt = _pyplot()
    steps = [(step, count) for step, count in funnel.items() if isinstance(count, int | float) and count >= 0]
    if not steps:
        raise InvalidInput("funnel.json holds no counts")
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(steps) + 1.2))
    names, counts = zip(*steps)
    ax.barh(range(len(steps)), [max(c, 0.8) for c in counts], color="#3b6ea8")
    for i, count in enumerate(counts):
        ax.text(max(count, 0.8) * 1.15, i, f"{int(count):,}", va="center", fontsize=8)
    ax.set_yticks(range(len(steps)), [n.replace("_", " ") for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.7, max(counts) * 12)
    ax.set_xlabel("count (log scale)")
    ax.set_title("screening funnel")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_screening(frame, path: Path) -> Path:
    """E_hull vs phi_ox of the screened formulas; the composition-screen survivors highlighted."""
    plt = _pyplot()
    frame = frame[frame["e_above_hull"].notna() & frame["phi_ox"].notna()]
    if frame.empty:
        raise InvalidInput("screen.parquet has no formula with both E_hull and phi_ox")
    passed = frame["passed"].fillna(False).astype(bool)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(frame.loc[~passed, "phi_ox"], frame.loc[~passed, "e_above_hull"], s=2, c="#b0b0b0",
               label=f"rejected ({int((~passed).sum()):,})", rasterized=True)
    ax.scatter(frame.loc[passed, "phi_ox"], frame.loc[passed, "e_above_hull"], s=4, c="#c0392b",
               label=f"passed ({int(passed.sum()):,})", rasterized=True)
    ax.set_xlabel("oxidation limit φ_ox (V vs Li/Li⁺)")
    ax.set_ylabel("E_hull (eV/atom, Roost E_f vs MP hull)")
    ax.set_title("composition screen")
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_conductivity(frame, path: Path, validated: set[str] | None = None) -> Path:
    """log10 sigma vs P(superionic) of the scored structures; shortlist, generated structures
    (``origin`` "generated", when the column is there) and validated ones marked."""
    plt = _pyplot()
    frame = frame[frame["log10_sigma_mean"].notna() & frame["p_superionic"].notna()]
    if frame.empty:
        raise InvalidInput("conductivity.parquet has no scored structure")
    if "shortlisted" in frame:
        short = frame["shortlisted"].fillna(False).astype(bool)
    else:  # an older table without the column: nothing marked
        short = frame["p_superionic"].isna()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(frame.loc[~short, "p_superionic"], frame.loc[~short, "log10_sigma_mean"], s=5, c="#7f8c8d",
               label=f"scored ({int((~short).sum()):,})", rasterized=True)
    ax.scatter(frame.loc[short, "p_superionic"], frame.loc[short, "log10_sigma_mean"], s=9, c="#2471a3",
               label=f"shortlisted ({int(short.sum()):,})")
    if "origin" in frame:
        made = frame[frame["origin"] == "generated"]
        if len(made):
            ax.scatter(made["p_superionic"], made["log10_sigma_mean"], s=28, marker="^", facecolors="none",
                       edgecolors="#27ae60", linewidths=1.0, label=f"generated ({len(made):,})")
    if validated:
        done = frame[frame["id"].isin(validated)]
        ax.scatter(done["p_superionic"], done["log10_sigma_mean"], s=60, facecolors="none", edgecolors="#c0392b",
                   linewidths=1.5, label=f"validated ({len(done)})")
    ax.axhline(-4.0, color="k", lw=0.8, ls="--")
    ax.text(ax.get_xlim()[0], -4.0, " 10⁻⁴ S/cm", va="bottom", fontsize=7)
    ax.set_xlabel("P(σ ≥ 10⁻⁴ S/cm)")
    ax.set_ylabel("predicted log10 σ(300 K) (S/cm)")
    ax.set_title("structure screen: conductivity model")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_campaign(out_dir: str | Path, plots_dir: str | Path | None = None) -> PlotResult:
    """Write the campaign figures of ``out_dir`` into ``plots_dir`` (default ``out_dir/plots``).

    Raises:
        InvalidInput: ``out_dir`` is not a campaign output folder (no ``funnel.json``), or a table
            it holds is unreadable or lacks the columns the figure needs.
    """
    out_dir = Path(out_dir)
    funnel_path = out_dir / "funnel.json"
    if not funnel_path.is_file():
        raise InvalidInput(f"{out_dir}: no funnel.json here; pass the --out folder of `htvs campaign run`")
    try:
        funnel = json.loads(funnel_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{funnel_path}: not readable JSON ({exc})") from exc
    if not isinstance(funnel, dict):
        raise InvalidInput(f"{funnel_path}: expected an object of step -> count")
    plots = Path(plots_dir) if plots_dir is not None else out_dir / "plots"
    plots = output_folder(plots)
    result = PlotResult()
    result.written.append(plot_funnel(funnel, plots / "funnel.png"))
    screen = out_dir / "screen.parquet"
    if screen.is_file():
        frame = _read_parquet(screen, ["e_above_hull", "phi_ox", "passed"])
        result.written.append(plot_screening(frame, plots / "screening.png"))
    else:
        result.skipped["screening.png"] = f"no {screen.name} (the campaign stopped before screening)"
    scored = out_dir / "conductivity.parquet"
    if scored.is_file():
        frame = _read_parquet(scored, ["id", "log10_sigma_mean", "p_superionic"])
        validated = _validated_ids(out_dir / "validation.parquet")
        result.written.append(plot_conductivity(frame, plots / "conductivity.png", validated))
    else:
        result.skipped["conductivity.png"] = f"no {scored.name} (no conductivity step in this campaign)"
    return result


def _validated_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    frame = _read_parquet(path, ["id"])
    if "error" in frame:
        frame = frame[frame["error"].isna()]
    return {str(i) for i in frame["id"] if not (isinstance(i, float) and math.isnan(i))}
