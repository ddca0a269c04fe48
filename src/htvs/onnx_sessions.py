"""onnxruntime sessions as every htvs model opens them.

One place for the settings: sequential execution, one inter-op thread, ``threads`` intra-op
threads (a server's parallelism comes from concurrent calls), the CUDA provider first when
onnxruntime has it, and a load failure reported as ModelNotReady naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from htvs.errors import ModelNotReady


def default_providers() -> list[str]:
    """CUDA then CPU when this onnxruntime build has CUDA, else CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: str | Path, threads: int | None = 1, providers: Sequence[str] | None = None):
    """An ``onnxruntime.InferenceSession`` of ``path``.

    Args:
        threads: intra-op threads (None: onnxruntime's default).
        providers: execution providers (None: :func:`default_providers`).

    Raises:
        ModelNotReady: the file cannot be loaded.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    chosen = list(providers) if providers is not None else default_providers()
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelNotReady(f"cannot load ONNX model {path}: {exc}") from exc
