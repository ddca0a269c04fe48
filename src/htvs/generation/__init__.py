"""Stage 5: crystal structure generation at fixed composition (DiffCSP-style joint diffusion).

Trained on the bundled MP-20-like set (:mod:`htvs.generation.mp_data`; perov_5 remains as a
regression benchmark) and evaluated on its test part against two baselines (:mod:`htvs.generation.evaluate`).
Heavy modules (torch) are imported by the submodules, not here.
"""

from __future__ import annotations

__all__ = [
    "GeneratedStructure",
    "GenerationConfig",
    "Generator",
    "generate_structures",
    "load_generator",
]


def __getattr__(name: str):
    if name in __all__:
        from htvs.generation import stage

        return getattr(stage, name)
    raise AttributeError(name)
