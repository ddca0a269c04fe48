"""Stage 5: crystal structure generation at fixed composition (DiffCSP-style joint diffusion).

Trained on perov_5 val (the train split is not available here), evaluated on perov_5 test.
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
