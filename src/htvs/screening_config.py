"""The thresholds of composition screening (stage 3), in one place.

The paper's values are the defaults: predicted E_f <= 0.1 eV/atom, predicted E_above_hull
<= 0.2 eV/atom, band gap >= 0.5 eV, oxidation potential phi_ox >= 4 V vs Li/Li+. The campaign
config, the ``htvs screen`` options and the gRPC service take their defaults from here. This
module imports nothing heavy, so the CLI and the config loader can read it at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from htvs.ranges import Range

#: Allowed range of each threshold (wide: a threshold may keep everything or nothing, but a
#: number far outside the physics of these quantities is a typo).
THRESHOLD_RANGES: dict[str, Range] = {
    "max_e_form_ev_per_atom": Range(-20.0, 20.0, "eV/atom"),
    "max_e_above_hull_ev_per_atom": Range(0.0, 20.0, "eV/atom"),
    "min_band_gap_ev": Range(0.0, 100.0, "eV"),
    "min_phi_ox_v": Range(-20.0, 20.0, "V"),
}


@dataclass(frozen=True)
class CompositionScreenConfig:
    """Thresholds of composition screening (units in the names; ranges in ``THRESHOLD_RANGES``)."""

    max_e_form_ev_per_atom: float = 0.1
    max_e_above_hull_ev_per_atom: float = 0.2
    min_band_gap_ev: float = 0.5
    min_phi_ox_v: float = 4.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            THRESHOLD_RANGES[name].check(name, value)


#: The paper's thresholds.
PAPER_THRESHOLDS = CompositionScreenConfig()
