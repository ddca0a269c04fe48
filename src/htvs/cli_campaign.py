"""``htvs campaign ...``: the whole funnel embedded, or one step as an Argo task runs it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from htvs.cli_output import (
    _clear_errors,
    _emit_json,
    _stderr,
    _step_progress,
)

campaign_app = typer.Typer(help="Screening campaigns: the whole funnel, or one step (Argo).", no_args_is_help=True)

_STORE_HELP = "Artifact store: a directory (default OUT/store) or s3://bucket/prefix (HTVS_S3_* env)."
_SERVICES_HELP = (
    "Run stages on the services that host them (htvs.v1.StageService) instead of in process: "
    "'substitution=host:port,composition=host:port,...' or plain 'host:port,...' (each asked which "
    "service it is). Stages of services not named run in process. The services must share the store."
)


def _stage_client(spec: str | None):
    """The StageClient of ``--services`` (None without); says which stages run where."""
    if not spec:
        return None
    from htvs.campaign.graph import STAGES
    from htvs.campaign.remote import StageClient, parse_services

    client = StageClient(parse_services(spec))
    remote = [s.name for s in STAGES if client.hosts(s)]
    local = [s.name for s in STAGES if not client.hosts(s)]
    _stderr().print(f"through services: {', '.join(remote) or 'none'}; in process: {', '.join(local)}",
                    highlight=False)
    return client


@campaign_app.command("run")
def campaign_run(
    config_path: Path = typer.Argument(..., help="Campaign YAML (see configs/demo.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: tables, funnel.json, candidates.csv."),
    store_url: str | None = typer.Option(None, "--store", help=_STORE_HELP),
    services: str | None = typer.Option(None, "--services", help=_SERVICES_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the funnel JSON on stdout."),
) -> None:
    """Run a whole campaign on this machine (the embedded default); a rerun resumes from the store."""
    from htvs.campaign import load_campaign, run_campaign
    from htvs.settings import Settings
    from htvs.store import open_store

    with _clear_errors():
        Settings.from_env()  # a bad HTVS_* variable is refused before any work
        config = load_campaign(config_path)
        from htvs.atomic import output_folder

        output_folder(out)  # an output folder that cannot be written is refused before the work
        client = _stage_client(services)
        store = open_store(store_url or (out / "store"), create_bucket=True)
        started = time.time()
        try:
            with _step_progress(not as_json) as progress:
                funnel = run_campaign(config, store, out, progress=progress, services=client)
        finally:
            if client is not None:
                client.close()
    report = _fresh_report(out, started)
    if as_json:
        _emit_json(funnel)
        if report is not None:
            _stderr().print(f"report: {report}", highlight=False)
        return
    table = Table("funnel step", "count", title=f"campaign {config.name!r}")
    for step, count in funnel.items():
        table.add_row(step, f"{count:,}")
    Console().print(table)
    Console().print(f"tables, funnel.json and candidates.csv in {out}", highlight=False)
    if report is not None:
        Console().print(f"report: {report}", highlight=False, soft_wrap=True)


def _fresh_report(out: Path, since: float) -> Path | None:
    """``out/report.html`` when this run wrote it; else None, after saying so on stderr."""
    from htvs.report import REPORT_FILE

    path = out / REPORT_FILE
    if path.is_file() and path.stat().st_mtime >= since - 1.0:
        return path
    _stderr().print(f"no {REPORT_FILE} written (the reason is logged above); the tables are complete; "
                    f"retry with: htvs campaign report {out}", highlight=False)
    return None


_REPORT_HELP = (
    "Write OUT/report.html: one self-contained page (no network) of a finished campaign.\n\n"
    "It holds the funnel next to the paper's counts with every threshold and its unit, histograms of "
    "predicted E_hull (eV/atom), band gap (eV) and phi_ox (V vs Li/Li+) with the thresholds, the predicted "
    "conductivities (mS/cm) with the shortlist cut, MSD and Arrhenius plots of each validated structure, the "
    "sortable candidate table (a unit in every header) linking each structure's CIF file in OUT/cifs/, the run "
    "metadata (config hash, models, stage timings; from OUT/run.json) and the data dictionary.\n\n"
    "`htvs campaign run` writes it as its last step; run this to redraw it, e.g. after copying a campaign "
    "folder back from a cluster."
)


@campaign_app.command("report", help=_REPORT_HELP)
def campaign_report(
    out: Path = typer.Argument(..., help="A campaign's --out folder (funnel.json and the tables beside it)."),
    window_products: bool = typer.Option(
        True, "--window-products/--no-window-products",
        help="Name the phases at each candidate's window limits (loads the reference hull: a few seconds)."),
) -> None:
    """Write OUT/report.html (see ``_REPORT_HELP``)."""
    from htvs.report import write_campaign_report

    with _clear_errors():
        path = write_campaign_report(out, window_products=window_products)
    Console().print(f"wrote {path}", highlight=False, soft_wrap=True)


@campaign_app.command("plot")
def campaign_plot(
    out: Path = typer.Argument(..., help="A campaign's --out folder (funnel.json, screen.parquet, conductivity.parquet)."),
    plots: Path | None = typer.Option(None, "--plots", help="Where the PNGs go (default OUT/plots)."),
) -> None:
    """Draw the funnel, the composition screen (E_hull vs phi_ox) and the conductivity scores as PNGs."""
    from htvs.campaign.plots import plot_campaign

    with _clear_errors():
        result = plot_campaign(out, plots)
    for path in result.written:
        Console().print(f"wrote {path}", highlight=False)
    for name, why in result.skipped.items():
        _stderr().print(f"skipped {name}: {why}", highlight=False)


@campaign_app.command("stage")
def campaign_stage(
    step: str = typer.Argument(..., help="A step of the stage graph (`htvs campaign stages` lists them)."),
    config_path: Path = typer.Option(..., "--config", help="Campaign YAML."),
    store_url: str = typer.Option(..., "--store", help=_STORE_HELP),
    shard: int | None = typer.Option(None, help="predict only: the shard to run (Argo fan-out)."),
    services: str | None = typer.Option(None, "--services", help=_SERVICES_HELP),
) -> None:
    """Run one step of a campaign against a store (what each Argo step runs): in this process, or
    with --services as a thin client of the service that hosts it."""
    from htvs.campaign import load_campaign, run_step
    from htvs.settings import Settings
    from htvs.store import StageManifest, open_store

    with _clear_errors():
        Settings.from_env()  # a bad HTVS_* variable is refused before any work
        config = load_campaign(config_path)
        client = _stage_client(services)
        try:
            with _step_progress(True) as progress:
                result = run_step(open_store(store_url, create_bucket=True), config, step, shard=shard,
                                  progress=progress, services=client)
        finally:
            if client is not None:
                client.close()
    if isinstance(result, StageManifest):
        _emit_json(json.loads(result.model_dump_json()))
    else:
        _emit_json({"step": step, "done": True})


@campaign_app.command("stages")
def campaign_stages(
    as_json: bool = typer.Option(False, "--json", help="Print the graph as JSON on stdout."),
) -> None:
    """List the stage graph: each step, what it needs, its outputs, config section, funnel counts,
    the service that runs it when deployed, and its Kubernetes resources."""
    from dataclasses import asdict

    from htvs.campaign.graph import STAGES

    rows = [
        {
            "name": s.name, "summary": s.summary, "needs": list(s.needs), "outputs": dict(s.outputs),
            "config_section": s.config_section, "funnel": list(s.funnel), "service": s.service,
            "sharded": s.sharded, "resources": asdict(s.resources),
        }
        for s in STAGES
    ]
    if as_json:
        _emit_json(rows)
        return
    table = Table("step", "needs", "outputs", "config", "service", "pod (cpu / memory / GPU)", title="stage graph")
    for row in rows:
        r = row["resources"]
        table.add_row(
            row["name"] + (" (sharded)" if row["sharded"] else ""), ", ".join(row["needs"]) or "-",
            ", ".join(row["outputs"]) or "-", row["config_section"] or "-", row["service"] or "-",
            f"{r['cpu_request']} / {r['memory_request']}..{r['memory_limit']} / {r['gpus']}",
        )
    Console().print(table)


@campaign_app.command("shards")
def campaign_shards(
    config_path: Path = typer.Option(..., "--config", help="Campaign YAML."),
    store_url: str | None = typer.Option(None, "--store", help="Accepted for symmetry; unused."),
) -> None:
    """Print the predict fan-out's shard indices as a JSON list (Argo withParam)."""
    from htvs.campaign import load_campaign, shard_list

    with _clear_errors():
        _emit_json(shard_list(load_campaign(config_path)))


