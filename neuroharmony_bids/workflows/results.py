"""What a run reports: its result per scan (turned into an exit code) and progress lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


def fmt_duration(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def few(names: Sequence[str], n: int = 3) -> str:
    """The first ``n`` names and how many more: scan lists in one log line."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


class Progress:
    """Logs ``<label>: done/total scans done, elapsed H:MM:SS, remaining ~H:MM:SS``.

    At most one line every ``every`` seconds, plus the first and the last.
    """

    def __init__(self, label: str, total: int, logger: logging.Logger, every: float = 5.0) -> None:
        self.label, self.total, self.logger, self.every = label, int(total), logger, every
        self.done = 0
        self.start = time.monotonic()
        self._last = -1e9

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        if self.done >= self.total:
            remaining = "0:00:00"
        elif self.done == 0:
            remaining = "unknown"
        else:
            remaining = "~" + fmt_duration(elapsed / self.done * (self.total - self.done))
        return (
            f"{self.label}: {self.done}/{self.total} scans done, elapsed "
            f"{fmt_duration(elapsed)}, remaining {remaining}"
        )

    def update(self, step: int = 1) -> None:
        self.done = min(self.total, self.done + step)
        now = time.monotonic()
        if self.done >= self.total or now - self._last >= self.every:
            self._last = now
            self.logger.info("%s", self.line())


@dataclass
class RunResult:
    """What a participant- or group-level run did (the CLI turns it into an exit code)."""

    level: str
    total: int = 0
    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    #: (FreeSurfer, MRIQC) versions of every per-scan sidecar in the output folder, when the
    #: run read them all anyway (the group level): the citation then needs no second pass
    scan_versions: set[tuple[str | None, str | None]] | None = None

    def summary(self) -> str:
        parts = [f"{self.level} level: {self.total} scans"]
        if self.succeeded:
            parts.append(f"{len(self.succeeded)} processed")
        if self.skipped:
            parts.append(f"{len(self.skipped)} already done (skipped; --overwrite recomputes)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warnings")
        return ", ".join(parts)


__all__ = ["Progress", "RunResult", "fmt_duration"]
