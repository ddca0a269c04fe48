"""Structure-aware stability before the expensive stages: batched CHGNet relaxation (no MD) and
E_f / E_hull against a hull of MP phases on the same CHGNet energy scale.

* :mod:`htvs.relax.batch` — FIRE + cell filter over several structures per CHGNet call.
* :mod:`htvs.relax.reference` — competing phases' CHGNet energies per chemical system, cached.
* :mod:`htvs.relax.pipeline` — check, relax and place structures on the hull (CLI and stage).

Nothing heavy is imported or loaded at import.
"""
