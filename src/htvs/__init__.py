"""htvs: high-throughput virtual screening for lithium solid electrolytes."""

from __future__ import annotations

__version__ = "0.1.0"
