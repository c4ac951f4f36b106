"""The report of a redrive (or of a dry run): counts per error code, skipped dead letters, as text
or JSON. Pure: ``build_report`` and the renderers never do I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from service.errors import ExitStatus
from service.tools.redrive_plan import (
    Plan,
    SkipReason,
)


@dataclass(slots=True)
class CodeCounts:
    """The report's line for one error code."""

    selected: int = 0
    redriven: int = 0
    would_succeed: int = 0
    skipped: int = 0


@dataclass(slots=True)
class Report:
    """What a redrive did (or, in a dry run, would do)."""

    dlq_topic: str
    target_topic: str
    dry_run: bool
    read: int
    unreadable: int
    duplicates: int
    markers: int
    already_redriven: int
    selected: int
    redriven: int
    would_succeed: int | None
    skipped: dict[str, int]
    by_code: dict[str, CodeCounts]
    skipped_dead_letters: list[dict[str, Any]]
    unmarked: int = 0
    """Redriven without their marker (at-least-once: writing it failed): a next run redrives them again."""

    @property
    def exit_status(self) -> ExitStatus:
        """OK (0) when every selected dead letter was (or would be) redriven and marked, else FAILED
        (1): the redrive is incomplete."""
        return ExitStatus.FAILED if self.skipped or self.unmarked else ExitStatus.OK

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return {
            "dlq_topic": self.dlq_topic,
            "target_topic": self.target_topic,
            "dry_run": self.dry_run,
            "read": self.read,
            "unreadable": self.unreadable,
            "duplicates": self.duplicates,
            "markers": self.markers,
            "already_redriven": self.already_redriven,
            "selected": self.selected,
            "redriven": self.redriven,
            "would_succeed": self.would_succeed,
            "skipped": self.skipped,
            "by_code": {
                code: {
                    "selected": c.selected,
                    "redriven": c.redriven,
                    "would_succeed": c.would_succeed if self.dry_run else None,
                    "skipped": c.skipped,
                }
                for code, c in self.by_code.items()
            },
            "skipped_dead_letters": self.skipped_dead_letters,
            "unmarked": self.unmarked,
            "exit_status": self.exit_status,
        }


def build_report(
    plan: Plan,
    *,
    dlq_topic: str,
    target_topic: str,
    dry_run: bool,
    failed: Iterable[str] = (),
    succeeding: Iterable[str] = (),
    unmarked: int = 0,
) -> Report:
    """Count the plan's decisions, given the ids whose publish ``failed``, (in a dry run) the ids
    that would now be ``succeeding``, and how many were redriven but ``unmarked``."""
    failed_ids, ok_ids = set(failed), set(succeeding)
    skipped: Counter[str] = Counter()
    by_code: dict[str, CodeCounts] = {}
    skipped_list: list[dict[str, Any]] = []
    redriven = 0
    for d in plan.decisions:
        counts = by_code.setdefault(d.code.value, CodeCounts())
        counts.selected += 1
        reason = d.skip
        if reason is None and d.recovery is not None:
            reason = SkipReason.TRUNCATED  # its input was never read back
        if reason is None and d.dead_letter_id in failed_ids:
            reason = SkipReason.PUBLISH_FAILED
        if reason is not None:
            counts.skipped += 1
            skipped[reason.value] += 1
            skipped_list.append(
                {
                    "id": d.dead_letter_id,
                    "code": d.code.value,
                    "scope": d.scope,
                    "reason": reason.value,
                    "redrive_count": d.redrive_count,
                    "dlq_partition": d.dlq_partition,
                    "dlq_offset": d.dlq_offset,
                }
            )
            continue
        redriven += 1
        counts.redriven += 1
        if d.dead_letter_id in ok_ids:
            counts.would_succeed += 1
    return Report(
        dlq_topic=dlq_topic,
        target_topic=target_topic,
        dry_run=dry_run,
        read=plan.read,
        unreadable=len(plan.unreadable),
        duplicates=plan.duplicates,
        markers=plan.markers,
        already_redriven=plan.already_redriven,
        selected=len(plan.decisions),
        redriven=redriven,
        would_succeed=sum(c.would_succeed for c in by_code.values()) if dry_run else None,
        skipped=dict(sorted(skipped.items())),
        by_code=dict(sorted(by_code.items())),
        skipped_dead_letters=skipped_list,
        unmarked=unmarked,
    )


_SKIPPED_SHOWN = 20

_REASON_TEXT = {
    SkipReason.TRUNCATED.value: "truncated raw copy, cannot be redriven faithfully",
    SkipReason.MAX_REDRIVES.value: "redrive limit reached",
    SkipReason.TOO_LARGE.value: "larger than the target topic accepts (max.message.bytes)",
    SkipReason.PUBLISH_FAILED.value: "publish failed",
}


def render_text(report: Report) -> str:
    """The human-readable summary."""
    r = report
    mode = " (dry run: nothing published)" if r.dry_run else ""
    lines = [f"redrive {r.dlq_topic} -> {r.target_topic}{mode}"]
    extra = []
    if r.already_redriven:
        extra.append(f"{r.already_redriven} redriven already")
    if r.duplicates:
        extra.append(f"{r.duplicates} duplicate(s) of selected ones")
    if r.unreadable:
        extra.append(f"{r.unreadable} unreadable record(s) ignored")
    markers = f" ({r.markers} redrive marker(s))" if r.markers else ""
    lines.append(
        f"read {r.read} record(s){markers}, selected {r.selected} dead letter(s)"
        + (f" ({', '.join(extra)})" if extra else "")
    )
    if r.dry_run:
        lines.append(f"would redrive {r.redriven}; {r.would_succeed} would now succeed")
    else:
        lines.append(f"redriven {r.redriven}")
    if r.unmarked:
        lines.append(
            f"{r.unmarked} redriven without a marker (writing it failed): a next run redrives them again"
        )
    skipped = sum(r.skipped.values())
    if skipped:
        lines.append(f"skipped {skipped}: " + ", ".join(f"{k}={n}" for k, n in r.skipped.items()))
    if r.by_code:
        lines.append("by code:")
        width = max(len(code) for code in r.by_code)
        for code, c in r.by_code.items():
            would = f"  would succeed {c.would_succeed:>5}" if r.dry_run else ""
            verb = "to redrive" if r.dry_run else "redriven"
            lines.append(
                f"  {code:<{width}}  selected {c.selected:>5}  {verb} {c.redriven:>5}{would}"
                f"  skipped {c.skipped:>5}"
            )
    if r.skipped_dead_letters:
        lines.append("skipped dead letters:")
        for item in r.skipped_dead_letters[:_SKIPPED_SHOWN]:
            lines.append(
                f"  {item['id']} ({item['code']}, dead-letter partition {item['dlq_partition']} "
                f"offset {item['dlq_offset']}, redrive count {item['redrive_count']}): "
                f"{_REASON_TEXT[item['reason']]}"
            )
        if len(r.skipped_dead_letters) > _SKIPPED_SHOWN:
            lines.append(f"  ... and {len(r.skipped_dead_letters) - _SKIPPED_SHOWN} more (see --json)")
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """The machine-readable summary: one JSON object."""
    return orjson.dumps(report.as_dict()).decode() + "\n"
