"""The README stays true to the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_data_dictionary_is_the_one_the_report_uses() -> None:
    """Every column table of htvs.report's data dictionary appears in the README, row for row."""
    from htvs.report import markdown_dictionary

    text = README.read_text(encoding="utf-8")
    tables = [block for block in re.split(r"\n#+ [^\n]+\n", markdown_dictionary()) if "|" in block]
    assert tables
    for table in tables:
        assert table.strip() in text, table.strip().splitlines()[2]


def test_readme_points_only_at_files_in_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    assert "../" not in text
    root = README.parent
    for path in re.findall(r"`((?:helm|configs|benchmarks|docker|argo|services|src|protos)/[\w./-]+\.(?:ya?ml|py|md|json))`", text):
        if "NAME" not in path:  # a pattern such as services/NAME/README.md
            assert (root / path).exists(), path
