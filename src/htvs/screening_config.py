"""The thresholds of composition screening (stage 3), in one place.

The paper's values are the defaults: predicted E_f <= 0.1 eV/atom, predicted E_above_hull
<= 0.2 eV/atom, band gap >= 0.5 eV, oxidation potential phi_ox >= 4 V vs Li/Li+, applied to the
ensemble mean (``rule="deterministic"``). ``rule="probabilistic"`` applies the same thresholds
to the ensemble's Gaussian (mean, std) instead: a formula passes when the probability that all
four hold is at least ``min_probability`` (see :func:`htvs.screening.screen_compositions`). The
campaign config, the ``htvs screen`` options and the gRPC service take their defaults from here.

``charge_balance`` adds a filter before the others (:mod:`htvs.charge_balance`): only formulas
whose elements can take known oxidation states summing to zero go on. The paper had no such
filter, so it is off here and in :data:`PAPER_THRESHOLDS`; the campaign config turns it on by
default (``screening.charge_balance``), and ``configs/paper.yaml`` turns it off.
This module imports nothing heavy, so the CLI and the config loader can read it at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from htvs.errors import InvalidInput, shown
from htvs.ranges import Range

#: The rules a screen can apply: the paper's thresholds on the ensemble mean, or on the
#: probability that the thresholds hold under the ensemble's Gaussian (mean, std).
RULES = ("deterministic", "probabilistic")

#: Allowed range of each threshold (wide: a threshold may keep everything or nothing, but a
#: number far outside the physics of these quantities is a typo).
THRESHOLD_RANGES: dict[str, Range] = {
    "max_e_form_ev_per_atom": Range(-20.0, 20.0, "eV/atom"),
    "max_e_above_hull_ev_per_atom": Range(0.0, 20.0, "eV/atom"),
    "min_band_gap_ev": Range(0.0, 100.0, "eV"),
    "min_phi_ox_v": Range(-20.0, 20.0, "V"),
}

#: Allowed range of every numeric setting of the screen: the thresholds, and the probability a
#: formula needs under the probabilistic rule (a probability of 0 would keep everything).
SETTING_RANGES: dict[str, Range] = {**THRESHOLD_RANGES, "min_probability": Range(0.0, 1.0, low_open=True)}


@dataclass(frozen=True)
class CompositionScreenConfig:
    """Thresholds of composition screening (units in the names; ranges in ``SETTING_RANGES``).

    ``rule`` is one of :data:`RULES`; ``min_probability`` is used by the probabilistic rule only
    (the survivors' probabilities are computed and reported under either rule);
    ``charge_balance`` keeps only charge-balanced formulas (off: the paper's screen).
    """

    max_e_form_ev_per_atom: float = 0.1
    max_e_above_hull_ev_per_atom: float = 0.2
    min_band_gap_ev: float = 0.5
    min_phi_ox_v: float = 4.0
    rule: str = "deterministic"
    min_probability: float = 0.5
    charge_balance: bool = False

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name in SETTING_RANGES:
                SETTING_RANGES[name].check(name, value)
        check_rule(self.rule)
        if not isinstance(self.charge_balance, bool):
            raise InvalidInput(f"charge_balance must be true or false, got {shown(self.charge_balance)}")


def check_rule(rule: object) -> str:
    """``rule`` if it is one of :data:`RULES`.

    Raises:
        InvalidInput: anything else, naming the value and the allowed rules.
    """
    if not isinstance(rule, str) or rule not in RULES:
        allowed = " or ".join(repr(r) for r in RULES)
        raise InvalidInput(f"rule must be {allowed}, got {shown(rule)}")
    return rule


#: The paper's thresholds.
PAPER_THRESHOLDS = CompositionScreenConfig()
