"""Timing helpers of the benchmark: percentiles in milliseconds, timed calls, the load average."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 / p95 / mean in milliseconds, and the sample count."""
    ms = np.asarray(samples_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "n": len(ms),
    }


def timed(fn: Callable[[], Any], n: int, warmup: int = 1) -> list[float]:
    """Seconds of ``n`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def module_version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None
