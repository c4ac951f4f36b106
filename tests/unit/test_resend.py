"""At-least-once delivery's decision without a broker: what is sent again after a failure."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from service.delivery.resend import resend_plan


@dataclass
class FakeSend:
    tp: str
    offset: int
    error: BaseException | None = None


def test_everything_acknowledged_sends_nothing_again() -> None:
    assert resend_plan([FakeSend("a", 0), FakeSend("b", 0)]) == ([], None)


def test_a_failure_resends_its_partition_from_there_on_and_leaves_the_others() -> None:
    boom = TimeoutError("request timed out")
    sends = [
        FakeSend("a", 0),
        FakeSend("b", 0),
        FakeSend("a", 1, boom),
        FakeSend("b", 1),
        FakeSend("a", 2),  # acknowledged, but after the failure: sent again to keep the order
    ]
    retry, first = resend_plan(sends)
    assert [(s.tp, s.offset) for s in retry] == [("a", 1), ("a", 2)]
    assert first is sends[2]


def test_the_first_failure_reported_is_the_earliest_over_all_partitions() -> None:
    sends = [FakeSend("a", 0), FakeSend("b", 0, OSError("b")), FakeSend("a", 1, OSError("a"))]
    retry, first = resend_plan(sends)
    assert first is sends[1]
    assert [(s.tp, s.offset) for s in retry] == [("b", 0), ("a", 1)]


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), min_size=1, max_size=40),
)
def test_the_last_copy_of_every_event_keeps_the_input_order_of_its_partition(
    plan: list[tuple[str, bool]],
) -> None:
    """Model the wire: every send lands (failed ones too, as a timeout may hide a write), then the
    plan's sends land again. The last copy of each event, per partition, is in input order, and
    every failed event is in the plan."""
    offsets: dict[str, int] = {}
    sends = []
    for tp, fails in plan:
        offsets[tp] = offsets.get(tp, -1) + 1
        sends.append(FakeSend(tp, offsets[tp], OSError() if fails else None))
    retry, _ = resend_plan(sends)
    wire = [(s.tp, s.offset) for s in sends] + [(s.tp, s.offset) for s in retry]
    last: dict[tuple[str, int], int] = {event: i for i, event in enumerate(wire)}
    for tp in offsets:
        order = sorted((i, off) for (p, off), i in last.items() if p == tp)
        assert [off for _, off in order] == sorted(off for _, off in order)
    assert {(s.tp, s.offset) for s in sends if s.error} <= {(s.tp, s.offset) for s in retry}
