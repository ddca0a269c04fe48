"""``model_card.json``: the one reader and checker of a model folder's card, and its version hash.

Every model htvs loads (the composition Roost ensembles, the conductivity GNN ensemble, the
structure generator) is a folder holding ``model_card.json`` and the files the card lists with
their sha256. Loaders read the card through :func:`read_model_card`, which checks, in order:

1. the folder and its ``model_card.json`` exist;
2. the card is valid JSON and a JSON object;
3. it declares the expected ``format`` (schema version) and ``target``, when the loader has one;
4. every listed member file is inside the folder, exists and has the sha256 the card gives.

Any failure raises :class:`~htvs.errors.ModelNotReady` naming the folder and the problem.
:func:`card_sha256` is the model version used in cache keys. Light module: no numerical imports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from htvs.errors import ModelNotReady

CARD_NAME = "model_card.json"
#: What :func:`card_sha256` answers for a folder without a card.
MISSING = "missing"


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_sha256(folder: str | Path) -> str:
    """sha256 of ``folder/model_card.json``'s bytes (the model's version), or ``"missing"``.

    The card lists the sha256 of every member file, so a new member gives a new card hash.
    """
    path = Path(folder) / CARD_NAME
    return sha256_of(path) if path.is_file() else MISSING


@dataclass(frozen=True)
class ModelCard:
    """A model folder's checked card.

    Attributes:
        folder: the model folder.
        data: the card's JSON object.
        members: the checked member files (those of the ``members`` lists, in card order, then
            the single files), as paths inside ``folder``.
    """

    folder: Path
    data: dict[str, Any]
    members: tuple[Path, ...]

    @property
    def path(self) -> Path:
        return self.folder / CARD_NAME

    def files(self, key: str) -> list[Path]:
        """The paths of the card's ``key`` list (``[{"file", "sha256"}, ...]``; absent: none)."""
        return [self.folder / entry["file"] for entry in self.data.get(key) or []]


def read_model_card(
    folder: str | Path,
    *,
    kind: str,
    card_format: str | None = None,
    target: str | None = None,
    members: Sequence[str] = ("models",),
    optional_members: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
    hint: str = "",
) -> ModelCard:
    """Read and check ``folder/model_card.json`` (see the module docstring for the checks).

    Args:
        folder: the model folder.
        kind: what the model is, for messages (``"e_form model"``, ``"generator"``).
        card_format: the card's required ``format`` value (None: not checked).
        target: the card's required ``target`` value (None: not checked).
        members: card keys holding a non-empty list of ``{"file", "sha256"}`` entries.
        optional_members: card keys holding such a list that may be absent or empty.
        files: single member files, name -> the card key holding its sha256
            (e.g. ``{"weights.pt": "sha256"}``).
        hint: how to obtain a model, appended to the message when the folder or card is missing.

    Raises:
        ModelNotReady: the first failed check, naming ``folder`` and the problem.
    """
    root = Path(folder)
    where = f"{kind} in {root}"
    advice = f"; {hint}" if hint else ""
    if not root.is_dir():
        raise ModelNotReady(f"no {where}: the folder does not exist{advice}")
    path = root / CARD_NAME
    if not path.is_file():
        raise ModelNotReady(f"no {where}: it has no {CARD_NAME}{advice}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelNotReady(f"{where}: {CARD_NAME} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelNotReady(f"{where}: {CARD_NAME} holds a {type(data).__name__}, not a JSON object")
    for key, expected in (("format", card_format), ("target", target)):
        if expected is not None and data.get(key) != expected:
            raise ModelNotReady(f"{where}: {CARD_NAME} declares {key} {data.get(key)!r}, expected {expected!r}")
    checked: list[Path] = []
    for key in (*members, *optional_members):
        entries = data.get(key)
        if entries is None and key in optional_members:
            continue
        if not isinstance(entries, list) or (key in members and not entries):
            raise ModelNotReady(f"{where}: {CARD_NAME} has no list of member files under {key!r}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str) \
                    or not isinstance(entry.get("sha256"), str):
                raise ModelNotReady(f"{where}: {CARD_NAME} {key}[{i}] is not a {{'file', 'sha256'}} entry: {entry!r}")
            checked.append(_check_member(root, where, entry["file"], entry["sha256"]))
    for name, key in (files or {}).items():
        expected_sha = data.get(key)
        if not isinstance(expected_sha, str):
            raise ModelNotReady(f"{where}: {CARD_NAME} has no {key!r} for {name}")
        checked.append(_check_member(root, where, name, expected_sha))
    return ModelCard(root, data, tuple(checked))


def _check_member(root: Path, where: str, name: str, expected: str) -> Path:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ModelNotReady(f"{where}: {CARD_NAME} lists {name!r}, which is not a file inside the folder")
    path = root / relative
    if not path.is_file():
        raise ModelNotReady(f"{where}: member file {name} listed in {CARD_NAME} is missing")
    digest = sha256_of(path)
    if digest != expected:
        raise ModelNotReady(f"{where}: {name} has sha256 {digest}, {CARD_NAME} says {expected}")
    return path
