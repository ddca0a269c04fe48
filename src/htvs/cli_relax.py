"""``htvs relax``: relax CIF structures with CHGNet (no MD) and place them on the CHGNet hull.

Thin shell around :func:`htvs.relax.pipeline.relax_and_assess`; torch and CHGNet load only when
the command runs. A file that cannot be read or relaxed is reported and the others go on; the
exit status is 2 when none relaxed.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from htvs.cli_output import EXIT_BAD_INPUT, _clear_errors, _emit_json, _stderr


def relax(
    files: list[Path] = typer.Argument(..., help="CIF files, one ordered Li-containing structure each."),
    fmax: float = typer.Option(0.05, "--fmax", help="Convergence: largest force below this, eV/Å."),
    max_steps: int = typer.Option(300, "--max-steps", min=0, help="FIRE steps at most per structure."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Structures per CHGNet call."),
    max_atoms: int = typer.Option(200, "--max-atoms", min=1, help="Largest cell relaxed, sites."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the relaxed CIFs (<name>_relaxed.cif)."),
    cache: Path | None = typer.Option(None, "--cache", help="Folder of the reference-energy cache "
                                      "(default ~/.cache/htvs/chgnet-hull)."),
    threads: int = typer.Option(1, min=1, help="torch intra-op threads."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Relax cell and positions with CHGNet (FIRE, batched) and print E_f, E_hull and the
    decomposition against the CHGNet energies of the competing MP phases (one energy scale)."""
    with _clear_errors():
        import torch

        from htvs.atomic import output_folder, write_text_atomic
        from htvs.errors import HTVSError
        from htvs.relax.batch import BatchRelaxConfig
        from htvs.relax.pipeline import relax_and_assess
        from htvs.relax.reference import ChgnetHull
        from htvs.validation.inputs import read_structure_file
        from htvs.validation.mlip import shared_chgnet

        config = BatchRelaxConfig(fmax_ev_per_angstrom=fmax, max_steps=max_steps, batch_size=batch_size)
        torch.set_num_threads(threads)
        items = []
        for path in files:
            try:
                items.append((path.name, read_structure_file(path, max_sites=max_atoms)))
            except HTVSError as exc:
                items.append((path.name, str(exc)))
        folder = output_folder(out) if out is not None else None
        model = shared_chgnet("cpu")
        outcomes = relax_and_assess(items, model, ChgnetHull(model, cache), config, max_atoms=max_atoms)
        documents = []
        for path, outcome in zip(files, outcomes):
            doc = outcome.to_dict()
            if outcome.structure is not None and folder is not None:
                target = folder / f"{_safe_stem(path)}_relaxed.cif"
                write_text_atomic(target, outcome.structure.to(fmt="cif"))
                doc["relaxed_cif"] = str(target)
            documents.append(doc)
        n_ok = sum(o.error is None for o in outcomes)
        if json_out:
            _emit_json({"relaxed": n_ok, "failed": len(outcomes) - n_ok, "results": documents})
        else:
            for doc in documents:
                _print(doc)
        if n_ok == 0:
            _stderr().print("[bold red]error:[/] no structure relaxed", highlight=False)
            raise typer.Exit(EXIT_BAD_INPUT)


def _safe_stem(path: Path) -> str:
    """A file-name-safe stem of ``path`` (letters, digits, ``._-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("_")[:100] or "structure"


def _print(doc: dict) -> None:
    if doc["error"] is not None:
        from rich.markup import escape

        _stderr().print(f"[bold red]error:[/] {escape(doc['error'])}", highlight=False)
        return
    decomposition = " + ".join(f"{x:.2f} {f}" for f, x in doc["decomposition"])
    print(f"{doc['name']}: {doc['formula']} E_f {doc['e_form_eV_per_atom']:.3f} eV/atom, "
          f"E_hull {doc['e_above_hull_eV_per_atom']:.3f} eV/atom (CHGNet hull of {doc['chemsys']}; "
          f"decomposes to {decomposition}), {'converged' if doc['converged'] else 'NOT converged'} "
          f"in {doc['n_steps']} steps" + (f" -> {doc['relaxed_cif']}" if "relaxed_cif" in doc else ""))


def register(app: typer.Typer) -> None:
    """Add ``htvs relax``."""
    app.command("relax")(relax)
