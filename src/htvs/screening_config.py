"""The thresholds of composition screening (stage 3), in one place.

The paper's values are the defaults: predicted E_f <= 0.1 eV/atom, predicted E_above_hull
<= 0.2 eV/atom, band gap >= 0.5 eV, oxidation potential phi_ox >= 4 V vs Li/Li+. The campaign
config, the ``htvs screen`` options and the gRPC service take their defaults from here. This
module imports nothing heavy, so the CLI and the config loader can read it at start-up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from htvs.errors import InvalidInput


@dataclass(frozen=True)
class CompositionScreenConfig:
    """Thresholds of composition screening (units in the names)."""

    max_e_form_ev_per_atom: float = 0.1
    max_e_above_hull_ev_per_atom: float = 0.2
    min_band_gap_ev: float = 0.5
    min_phi_ox_v: float = 4.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInput(f"{name} must be a finite number, got {value!r}")
        if self.min_band_gap_ev < 0:
            raise InvalidInput(f"min_band_gap_ev must be >= 0, got {self.min_band_gap_ev}")
        if self.max_e_above_hull_ev_per_atom < 0:
            raise InvalidInput(
                f"max_e_above_hull_ev_per_atom must be >= 0, got {self.max_e_above_hull_ev_per_atom}"
            )


#: The paper's thresholds.
PAPER_THRESHOLDS = CompositionScreenConfig()
