"""The core's limits: plain values, so the pure core needs no settings machinery."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one payload may cost. Defaults suit Kafka's default 1 MB message size."""

    max_payload_bytes: int = 1_000_000
    max_records_per_payload: int = 10_000
    max_title_chars: int = 1_000
    max_text_chars: int = 500_000
    max_dead_letter_raw_bytes: int = 256 * 1024
    max_event_bytes: int = 1_000_000
