"""The benchmark's profile headings (scripts/bench/profile.py): each names code that exists, and a
sample is filed under the stage of its innermost named frame."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from bench import profile  # noqa: E402


@pytest.mark.parametrize("name", [n for stage in profile.STAGES for n in stage.where])
def test_every_heading_names_real_code(name: str) -> None:
    target = profile.resolve(name)
    assert target.path.endswith((".py", "/"))


def test_stage_names_are_distinct_and_rest_is_not_one_of_them() -> None:
    names = [stage.name for stage in profile.STAGES]
    assert len(set(names)) == len(names)
    assert profile.REST not in names
    assert profile.IDLE in names


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("service.delivery.ingestor.Ingestor._await_acks", "has no '_await_acks'"),
        ("service.delivery.app._Outbox", "service.delivery.app has no '_Outbox'"),
        ("service.nowhere", "service has no 'nowhere'"),
        ("nowhere_at_all.thing", "no such module"),
        # Imported there, defined in outbox.py: py-spy names the module that defines it.
        ("service.delivery.pipeline.Send", "not defined there"),
    ],
)
def test_a_heading_that_names_nothing_is_refused(name: str, why: str) -> None:
    with pytest.raises(LookupError, match=why):
        profile.resolve(name)


def test_targets_match_frames_as_py_spy_names_them() -> None:
    method = profile.resolve("service.delivery.outbox.Outbox.add")
    assert method.matches("Outbox.add", "service/delivery/outbox.py")
    assert method.matches("Outbox.add", "/work/tree/service/delivery/outbox.py")
    assert not method.matches("Outbox.add_more", "service/delivery/outbox.py")
    assert not method.matches("Outbox.flush", "service/delivery/outbox.py")
    assert not method.matches("Outbox.add", "other/service/delivery/outbox.pyx")
    package = profile.resolve("service.core")
    assert package.matches("process_payload", "/x/service/core/events.py")
    assert not package.matches("route", "service/delivery/routing.py")
    module = profile.resolve("asyncio.events")
    assert module.matches("Handle._run", "asyncio/events.py")
    assert not module.matches("process_payload", "service/core/events.py")


def _frame(function: str, file: str) -> str:
    return f"{function} ({file}:10)"


LOOP = _frame("Pipeline.run", "service/delivery/pipeline.py")
PROCESS = _frame("Pipeline._process", "service/delivery/pipeline.py")
RUN_ONCE = _frame("BaseEventLoop._run_once", "asyncio/base_events.py")
HANDLE = _frame("Handle._run", "asyncio/events.py")
HANDED_OVER = _frame("AtLeastOnce.handed_over", "service/delivery/modes/at_least_once.py")


@pytest.mark.parametrize(
    ("frames", "stage"),
    [
        ([RUN_ONCE, HANDLE, LOOP, PROCESS, _frame("process_payload", "service/core/events.py"),
          _frame("BaseModel.model_validate", "pydantic/main.py")], "core"),
        ([RUN_ONCE, HANDLE, LOOP, PROCESS], "routing and outbox"),
        ([RUN_ONCE, HANDLE, LOOP, PROCESS, _frame("Outbox.add", "service/delivery/outbox.py"),
          _frame("AIOKafkaProducer.send_batch", "aiokafka/producer/producer.py")],
         "producer append and request build"),
        ([RUN_ONCE, HANDLE, _frame("Sender._send_produce_req", "aiokafka/producer/sender.py"),
          _frame("AIOKafkaConnection.send", "aiokafka/conn.py"),
          _frame("_SelectorSocketTransport.write", "asyncio/selector_events.py")], "socket writes"),
        ([RUN_ONCE, HANDLE, LOOP, PROCESS, _frame("RecordLines.add", "service/ops/logs.py"),
          _frame("_stamp", "service/ops/logs.py")], "logging"),
        ([RUN_ONCE, HANDLE, LOOP, _frame("AIOKafkaConsumer.getmany", "aiokafka/consumer/consumer.py")],
         "fetch and unpack"),
        ([RUN_ONCE, HANDLE, LOOP, HANDED_OVER],
         "completion and commit"),
        ([RUN_ONCE, HANDLE, LOOP, HANDED_OVER,
          _frame("Delivery._delivered", "service/delivery/modes/base.py"),
          _frame("Metrics.count_batch", "service/ops/metrics.py")], "metrics"),
        ([RUN_ONCE, _frame("EpollSelector.select", "selectors.py")], profile.IDLE),
        ([RUN_ONCE], "event loop"),
        ([_frame("<module>", "service/__main__.py"), _frame("main", "service/cli.py")], profile.REST),
        ([], profile.REST),
    ],
)  # fmt: skip
def test_a_sample_goes_to_the_stage_of_its_innermost_named_frame(frames: list[str], stage: str) -> None:
    assert profile.Filing().stage_of(frames) == stage


def test_a_function_outranks_its_module_in_one_frame() -> None:
    stages = (
        profile.Stage("module", "", ("service.delivery.pipeline",)),
        profile.Stage("function", "", ("service.delivery.pipeline._send",)),
    )
    filing = profile.Filing(stages)
    assert filing.stage_of([_frame("_send", "service/delivery/pipeline.py")]) == "function"
    assert filing.stage_of([_frame("Pipeline.run", "service/delivery/pipeline.py")]) == "module"


COLLAPSED = """\
thread (100): MainThread;<module> (service/__main__.py:3);Pipeline._process (service/delivery/pipeline.py:2) 7
thread (100);<module> (service/__main__.py:3);EpollSelector.select (selectors.py:468) 3
thread (101): ThreadPoolExecutor-0_0;Thread._bootstrap (threading.py:1002) 5
thread (100) 1
not a line
"""


def test_only_the_main_threads_samples_are_counted() -> None:
    samples = profile.parse_collapsed(COLLAPSED, main_thread=100)
    assert samples.total == 11
    assert samples.other_threads == 5
    counts = profile.by_stage(samples, profile.Filing())
    assert counts["routing and outbox"] == 7
    assert counts[profile.IDLE] == 3
    assert counts[profile.REST] == 1
    assert list(counts)[-1] == profile.REST
    assert sum(counts.values()) == 11


def test_per_message_figures() -> None:
    counts = {"core": 100, profile.IDLE: 50, profile.REST: 50}
    # 100 samples at 200 Hz are 0.5 s; over 10,000 messages, 50 µs each.
    assert profile.us_per_message(counts, 10_000, rate=200)["core"] == pytest.approx(50.0)
    shares = profile.cpu_shares(counts, cpu_us_per_msg=60.0)
    assert shares == {"core": pytest.approx(40.0), profile.IDLE: 0.0, profile.REST: pytest.approx(20.0)}
    assert profile.cpu_shares(counts, None) == {}
    assert profile.us_per_message(counts, 0) == {}


def test_hottest_functions_drop_line_numbers() -> None:
    hot = profile.hottest(profile.parse_collapsed(COLLAPSED, main_thread=100))
    assert hot["self_pct"][0] == ("Pipeline._process (service/delivery/pipeline.py)", pytest.approx(63.6))
    assert ("<module> (service/__main__.py)", pytest.approx(90.9)) in hot["inclusive_pct"]
