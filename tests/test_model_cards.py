"""The one model-card reader: every check fails with ModelNotReady naming the folder and problem."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from htvs.composition.onnx_export import CARD_FORMAT as ROOST_FORMAT
from htvs.composition.ship import shipped_model_dir
from htvs.conductivity.predict import CARD_FORMAT as CONDUCTIVITY_FORMAT
from htvs.conductivity.predict import default_model_dir as conductivity_dir
from htvs.errors import ModelNotReady
from htvs.model_cards import CARD_NAME, MISSING, card_sha256, read_model_card, sha256_of


def _model(folder: Path, **card) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.onnx").write_bytes(b"member a")
    (folder / "b.onnx").write_bytes(b"member b")
    data = {
        "format": "toy/1",
        "target": "e_form",
        "models": [{"file": name, "sha256": sha256_of(folder / name)} for name in ("a.onnx", "b.onnx")],
        **card,
    }
    (folder / CARD_NAME).write_text(json.dumps(data))
    return folder


def test_a_good_card_is_read_with_its_checked_members(tmp_path) -> None:
    folder = _model(tmp_path / "m", units="eV/atom")
    card = read_model_card(folder, kind="e_form model", card_format="toy/1", target="e_form")
    assert card.folder == folder and card.path == folder / CARD_NAME
    assert card.data["units"] == "eV/atom"
    assert card.members == (folder / "a.onnx", folder / "b.onnx") == tuple(card.files("models"))
    assert card.files("forest_files") == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: None, None),
        (lambda f: (f / CARD_NAME).unlink(), "no e_form model in {f}: it has no model_card.json; train one"),
        (lambda f: (f / CARD_NAME).write_text("{not json"), "{f}: model_card.json is not readable JSON"),
        (lambda f: (f / CARD_NAME).write_text("[1, 2]"), "{f}: model_card.json holds a list, not a JSON object"),
        (lambda f: _model(f, format="toy/2"), "declares format 'toy/2', expected 'toy/1'"),
        (lambda f: _model(f, target="band_gap"), "declares target 'band_gap', expected 'e_form'"),
        (lambda f: _model(f, models=[]), "has no list of member files under 'models'"),
        (lambda f: _model(f, models=[{"file": "a.onnx"}]), r"models\[0\] is not a"),
        (lambda f: (f / "b.onnx").unlink(), "member file b.onnx listed in model_card.json is missing"),
        (lambda f: (f / "a.onnx").write_bytes(b"tampered"), "a.onnx has sha256 .*, model_card.json says"),
        (lambda f: _model(f, models=[{"file": "../a.onnx", "sha256": "0"}]), "not a file inside the folder"),
    ],
)
def test_each_check_names_the_folder_and_the_problem(tmp_path, change, message) -> None:
    folder = _model(tmp_path / "m")
    change(folder)
    if message is None:
        read_model_card(folder, kind="e_form model", card_format="toy/1", target="e_form", hint="train one")
        return
    with pytest.raises(ModelNotReady) as caught:
        read_model_card(folder, kind="e_form model", card_format="toy/1", target="e_form", hint="train one")
    text = str(caught.value)
    assert str(folder) in text
    assert re.search(message.format(f=re.escape(str(folder))), text), text


def test_a_missing_folder_is_named(tmp_path) -> None:
    with pytest.raises(ModelNotReady, match=f"no generator in {tmp_path / 'none'}: the folder does not exist"):
        read_model_card(tmp_path / "none", kind="generator")


def test_optional_lists_and_single_files(tmp_path) -> None:
    folder = _model(tmp_path / "m")
    (folder / "weights.pt").write_bytes(b"weights")
    card = json.loads((folder / CARD_NAME).read_text())
    card["forest_files"] = [{"file": "a.onnx", "sha256": sha256_of(folder / "a.onnx")}]
    card["sha256"] = sha256_of(folder / "weights.pt")
    (folder / CARD_NAME).write_text(json.dumps(card))
    checked = read_model_card(folder, kind="x", optional_members=("forest_files", "absent"),
                              files={"weights.pt": "sha256"})
    assert [p.name for p in checked.members] == ["a.onnx", "b.onnx", "a.onnx", "weights.pt"]
    (folder / "weights.pt").write_bytes(b"other")
    with pytest.raises(ModelNotReady, match="weights.pt has sha256"):
        read_model_card(folder, kind="x", members=(), files={"weights.pt": "sha256"})
    with pytest.raises(ModelNotReady, match="has no 'digest' for weights.pt"):
        read_model_card(folder, kind="x", members=(), files={"weights.pt": "digest"})


def test_card_sha256_is_the_hash_of_the_card_bytes(tmp_path) -> None:
    folder = _model(tmp_path / "m")
    assert card_sha256(folder) == hashlib.sha256((folder / CARD_NAME).read_bytes()).hexdigest()
    assert card_sha256(tmp_path / "nowhere") == MISSING


def test_every_shipped_model_passes_its_loader_checks() -> None:
    for target in ("e_form", "band_gap"):
        card = read_model_card(shipped_model_dir(target), kind=f"{target} model", card_format=ROOST_FORMAT,
                               target=target)
        assert card.members
    card = read_model_card(conductivity_dir(), kind="conductivity model", card_format=CONDUCTIVITY_FORMAT,
                           optional_members=("forest_files",))
    assert len(card.members) == len(card.data["models"]) + len(card.data["forest_files"])


def test_composition_loader_refuses_a_card_of_another_target() -> None:
    from htvs.composition.ship import load_ensemble

    with pytest.raises(ModelNotReady, match="declares target 'band_gap', expected 'e_form'"):
        load_ensemble("e_form", shipped_model_dir("band_gap"), threads=1)
