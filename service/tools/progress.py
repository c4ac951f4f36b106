"""The progress bar of ``marker-ingest produce``: tqdm's, on stderr, only on a terminal."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import IO, Any

from tqdm import tqdm


class ProgressBar(tqdm):  # type: ignore[type-arg]
    """tqdm's bar on ``stream`` (stderr): the bytes read over the total, then files and messages.

    Disabled, writing nothing, when the stream is not a terminal (``disable=None``). It is redrawn
    at most every ``mininterval`` seconds: an update in between costs a clock read, so counting
    each message does not slow a push down. ``close`` draws the final state and ends the line.
    """

    monitor_interval = 0
    """No monitor thread: with ``miniters=0`` every update looks at the clock itself."""

    def __init__(
        self, stream: IO[str], total_bytes: int, total_files: int, *, mininterval: float = 0.1
    ) -> None:
        self.total_files = total_files
        self.files = self.messages = 0
        super().__init__(
            total=total_bytes,
            file=stream,
            disable=None,
            unit="B",
            unit_scale=True,
            bar_format="{l_bar}{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
            mininterval=mininterval,
            miniters=0,
            leave=True,
        )

    @property
    def format_dict(self) -> MutableMapping[str, Any]:
        """tqdm's values for the line, the files and messages as its postfix (after the rate)."""
        values = super().format_dict
        values["postfix"] = f"{self.files}/{self.total_files} file(s), {self.messages} message(s)"
        return values

    def file_done(self, size: int) -> None:
        """A file was read (and queued or refused)."""
        self.files += 1
        self.update(size)

    def message_sent(self, _size: int) -> None:
        """A message was handed to the producer."""
        self.messages += 1
        self.update(0)
