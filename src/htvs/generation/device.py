"""Which torch device the generator runs on (sampling in the service, training on the CLI)."""

from __future__ import annotations

import re

from htvs.errors import InvalidInput, ModelNotReady

_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")


def resolve_device(spec: str | None) -> str:
    """The torch device to sample on: ``auto`` (or None/empty) is ``cuda`` when
    ``torch.cuda.is_available()``, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given.

    Raises:
        InvalidInput: a spec that is none of those (named).
        ModelNotReady: ``cuda``/``cuda:N`` asked for, but torch sees no such GPU.
    """
    import torch

    text = (spec or "auto").strip().lower()
    if not _DEVICE.match(text):
        raise InvalidInput(f"generator device {str(spec)[:40]!r} is not one of auto, cpu, cuda, cuda:N")
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    if not torch.cuda.is_available():
        raise ModelNotReady(f"generator device {text!r} was asked for, but torch {torch.__version__} sees no CUDA "
                            f"device (built with CUDA {torch.version.cuda}); use auto or cpu")
    index = int(text.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ModelNotReady(f"generator device {text!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return text
