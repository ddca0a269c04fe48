"""The atomic-write helper: whole files or none, the old file kept when a write fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from htvs.atomic import atomic_path, write_bytes_atomic, write_json_atomic


def test_writes_replace_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json_atomic({"x": 1}, target)
    write_json_atomic({"x": 2}, target)
    assert target.read_text() == '{\n "x": 2\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "table.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.bin"]


def test_the_temporary_name_keeps_the_suffix(tmp_path: Path) -> None:
    """numpy appends .npz to names without it: the temporary must end in .npz too."""
    target = tmp_path / "arrays.npz"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, a=np.arange(3))
    with np.load(target) as arrays:
        assert arrays["a"].tolist() == [0, 1, 2]
