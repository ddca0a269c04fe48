"""Progress as plain log lines (stderr not a terminal): counts, rate, ETA, throttling."""

from __future__ import annotations

from htvs.cli_output import LogLines, _format_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_give_counts_rate_and_eta_at_most_every_interval() -> None:
    lines: list[str] = []
    clock = Clock()
    log = LogLines(lines.append, every_s=10.0, clock=clock)
    log("predict", 0, 1000)
    clock.now = 5.0
    log("predict", 100, 1000)  # within the interval: silent
    clock.now = 20.0
    log("predict", 400, 1000)  # 20 /s since the start -> 600 left = 30 s
    clock.now = 50.0
    log("predict", 1000, 1000)
    log("predict", 1000, 1000)  # the end is reported once
    assert lines == [
        "predict: started, 1,000 to do",
        "predict: 400/1,000 (40 %), 20.0/s, ETA 30s",
        "predict: 1,000/1,000 done in 50s",
    ]


def test_unknown_size_and_empty_steps() -> None:
    lines: list[str] = []
    log = LogLines(lines.append, clock=Clock())
    log("prototypes", 0, None)
    log("prototypes", 4320, 4320)
    log("structures", 0, 0)
    assert lines == [
        "prototypes: started",
        "prototypes: 4,320/4,320 done in 0s",
        "structures: started, 0 to do",
        "structures: 0/0 done in 0s",
    ]


def test_format_seconds() -> None:
    assert [_format_seconds(s) for s in (0.4, 59, 61, 3599, 3600, 7322)] == [
        "0s", "59s", "1m01s", "59m59s", "1h00m", "2h02m"]
