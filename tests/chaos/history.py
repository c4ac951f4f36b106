"""The run's history: every nemesis action and run step, timestamped, in ``events.jsonl`` and on
stdout, so that a failing run can be read afterwards and replayed with its seed."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson


class History:
    """Appends events to ``<dir>/events.jsonl``; counts the faults by kind."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started = time.monotonic()
        self.faults: Counter[str] = Counter()
        self._out = (folder / "events.jsonl").open("ab")

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def event(self, what: str, **fields: Any) -> None:
        """Record one event (``fault`` events are counted by their ``kind``)."""
        if what == "fault":
            self.faults[str(fields["kind"])] += 1
        line = {
            "t": round(self.elapsed(), 2),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        line.update(event=what, **fields)
        self._out.write(orjson.dumps(line) + b"\n")
        self._out.flush()
        detail = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"[{line['t']:8.2f}] {what} {detail}", file=sys.stdout, flush=True)

    def close(self) -> None:
        """Close the file."""
        self._out.close()
