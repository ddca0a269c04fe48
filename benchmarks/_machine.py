"""Machine description attached to every benchmark result."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone


def machine_info() -> dict[str, object]:
    """Platform, CPU model/count, memory and Python of this machine, plus the UTC date."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError):
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": mem_gb,
        "python": sys.version.split()[0],
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
