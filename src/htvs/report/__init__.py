"""The campaign report: one self-contained HTML page of a campaign's output folder.

``htvs campaign report DIR`` (and the last step of ``htvs campaign run``) writes
``DIR/report.html``: the funnel next to the paper's, histograms of the screened predictions with
the thresholds, the conductivity scores with the shortlist cut, per validated structure its MSD
and Arrhenius plots, the sortable candidate table linking each structure's CIF (``DIR/cifs/``),
the run metadata and the data dictionary (:mod:`htvs.report.columns`).
"""

from __future__ import annotations

from htvs.report.build import REPORT_FILE, build_report, report_after_run, write_campaign_report
from htvs.report.columns import DATA_DICTIONARY, markdown_dictionary

__all__ = [
    "DATA_DICTIONARY",
    "REPORT_FILE",
    "build_report",
    "markdown_dictionary",
    "report_after_run",
    "write_campaign_report",
]
