"""The pure part of ``marker-ingest produce``: splitting, linting, the progress bar, the summary."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
from pathlib import Path

import pytest
import structlog
from markertext import record

from service.cli import main
from service.core.limits import Limits
from service.errors import ExitStatus
from service.settings import Settings
from service.tools.command import display_name, tool_logging
from service.tools.produce import PushReport, render_summary
from service.tools.produce_messages import (
    STDIN,
    BadPath,
    NothingToPush,
    collect_files,
    file_messages,
    first_problem,
    split_records,
)
from service.tools.progress import ProgressBar


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("INGEST_", "KAFKA_")):
            monkeypatch.delenv(name)


# --- splitting ------------------------------------------------------------------------------------


def test_per_record_messages_are_keyed_by_fn() -> None:
    records = [record(fn="1"), record(fn="22", title="Two"), record(fn="333")]
    data = ("\n\n".join(records) + "\n").encode()
    assert split_records(data, "feed.txt") == [(r.split()[1].encode(), r.encode()) for r in records]


def test_a_bom_is_not_repeated_in_every_record() -> None:
    data = b"\xef\xbb\xbf" + f"{record(fn='1')} {record(fn='2')}".encode()
    messages = split_records(data, "f")
    assert [v for _, v in messages] == [record(fn="1").encode(), record(fn="2").encode()]


def test_a_record_without_a_readable_fn_is_keyed_by_the_file_name() -> None:
    no_fn = "D-A-T-E-S-T-A-R-T. 2024-01-01 D-A-T-E-E-N-D. T-E-X-T-S-T-A-R-T. b T-E-X-T-E-N-D."
    open_fn = "F-N-S-T-A-R-T. 9 D-A-T-E-S-T-A-R-T. 2024-01-01 D-A-T-E-E-N-D."
    empty_fn = record(fn="")
    for text in (no_fn, open_fn, empty_fn):
        [(key, value)] = split_records(text.encode(), "f.txt")
        assert (key, value) == (b"f.txt", text.encode())


def test_bad_records_are_split_out_as_they_are_so_the_service_dead_letters_them() -> None:
    text = " ".join([record(fn="1"), "stray words", record(fn="2", date="2024-02-30"), record(fn="3")])
    messages = split_records(text.encode(), "f")
    assert [k for k, _ in messages] == [b"1", b"2", b"3"]
    assert messages[0][1] == (record(fn="1") + " stray words").encode()


def test_a_file_the_scanner_cannot_split_stays_whole() -> None:
    for data in (b"\xff" + record(fn="1").encode(), b"no markers here", b"", b"  \n"):
        assert split_records(data, "x.txt") == [(b"x.txt", data)]


def test_splitting_ignores_the_record_limit() -> None:
    data = " ".join(record(fn=str(i)) for i in range(Limits().max_records_per_payload + 5)).encode()
    assert len(split_records(data, "big")) == Limits().max_records_per_payload + 5


def test_per_file_is_one_message_keyed_by_the_file_name() -> None:
    data = f"{record(fn='1')} {record(fn='2')}".encode()
    assert file_messages(data, "a.txt", per_record=False) == [(b"a.txt", data)]
    assert len(file_messages(data, "a.txt", per_record=True)) == 2


# --- lint -----------------------------------------------------------------------------------------


def test_lint_passes_good_messages() -> None:
    messages = [(b"1", record(fn="1").encode()), (b"2", record(fn="2").encode())]
    assert first_problem(messages, Limits(), name="f") is None


def test_lint_describes_the_first_problem() -> None:
    text = f"{record(fn='1')} {record(fn='2', date='2024-02-30')} {record(fn='x')}"
    problem = first_problem([(b"f", text.encode())], Limits(), name="f")
    assert problem is not None
    assert problem.startswith("message 0 record 1: invalid_field at ")
    per_record = first_problem(split_records(text.encode(), "f"), Limits(), name="f")
    assert per_record is not None
    assert per_record.startswith("message 1 record 0: invalid_field at ")


def test_lint_uses_the_limits() -> None:
    text = " ".join(record(fn=str(i)) for i in range(3)).encode()
    problem = first_problem([(b"f", text)], Limits(max_records_per_payload=2), name="f")
    assert problem is not None
    assert "too_many_records" in problem
    problem = first_problem([(b"k", b"ok"), (b"f", b"\xff")], Limits(), name="f")
    assert problem is not None
    assert problem.startswith("message 0 record 0: no_markers: ")
    problem = first_problem([(b"f", b"\xff")], Limits(), name="f")
    assert problem is not None
    assert problem.startswith("message 0 record 0: invalid_encoding at 0: ")


# --- progress and summary -------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _frames(tty: _Tty) -> list[str]:
    """The lines the bar drew, one per redraw (tqdm pads a shorter line with spaces)."""
    return [frame.rstrip() for frame in tty.getvalue().split("\r")[1:]]


def test_the_progress_bar_draws_nothing_when_the_stream_is_not_a_terminal() -> None:
    quiet = io.StringIO()
    bar = ProgressBar(quiet, 100, 2, mininterval=0)
    bar.file_done(50)
    bar.message_sent(50)
    bar.close()
    assert quiet.getvalue() == ""


def test_the_progress_bar_shows_the_bytes_files_and_messages_and_ends_the_line() -> None:
    tty = _Tty()
    bar = ProgressBar(tty, 2_000_000, 2, mininterval=0)
    bar.file_done(500_000)
    bar.message_sent(10)
    bar.message_sent(10)
    bar.file_done(1_500_000)
    bar.message_sent(10)
    bar.close()
    frames = _frames(tty)
    assert tty.getvalue().endswith("\n")
    assert frames[0].startswith("  0%|")
    assert "0.00B/2.00MB" in frames[0]
    assert frames[0].endswith(", 0/2 file(s), 0 message(s)]")
    assert frames[1].startswith(" 25%|")
    assert "500kB/2.00MB" in frames[1]
    assert frames[1].endswith(", 1/2 file(s), 0 message(s)]")
    assert frames[3].endswith(", 1/2 file(s), 2 message(s)]")
    assert frames[-1].startswith("100%|")
    assert "2.00MB/2.00MB" in frames[-1]
    assert frames[-1].endswith(", 2/2 file(s), 3 message(s)]")


def test_the_progress_bar_is_redrawn_at_most_every_mininterval() -> None:
    tty = _Tty()
    bar = ProgressBar(tty, 100, 1, mininterval=3600)
    bar.file_done(100)
    for _ in range(10_000):
        bar.message_sent(1)
    bar.close()
    frames = _frames(tty)
    assert len(frames) == 2, "the first frame, then the final one at close"
    assert frames[-1].endswith(", 1/1 file(s), 10000 message(s)]")


def test_render_summary() -> None:
    report = PushReport(files=3, messages=12, bytes=4096, seconds=2.0)
    assert render_summary(report, "news.raw") == (
        "pushed 3 file(s) as 12 message(s), 4096 bytes, to news.raw in 2.00 s (6.0 messages/s)\n"
    )
    report.refused.append((Path("bad.txt"), "no_markers"))
    assert render_summary(report, "t").endswith("(6.0 messages/s); refused 1 file(s)\n")
    report.failed.append((Path("big.txt"), "too large to send"))
    assert render_summary(report, "t").endswith("(6.0 messages/s); refused 1 file(s); failed 1 file(s)\n")
    assert PushReport().messages_per_second == 0.0


# --- sending, per file ----------------------------------------------------------------------------


class _FakeProducer:
    """Refuses values over ``client_limit`` bytes at ``send`` (as aiokafka does over its request size)
    and fails the acknowledgement of values over ``broker_limit`` (as a broker over max.message.bytes)."""

    def __init__(self, client_limit: int, broker_limit: int) -> None:
        self.client_limit, self.broker_limit = client_limit, broker_limit
        self.sent: list[bytes | None] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, _topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        from aiokafka.errors import MessageSizeTooLargeError

        if len(value) > self.client_limit:
            raise MessageSizeTooLargeError(f"The message is {len(value)} bytes")
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(value) > self.broker_limit:
            ack.set_exception(MessageSizeTooLargeError())
        else:
            self.sent.append(key)
            ack.set_result(None)
        return ack


async def test_each_file_is_reported_on_its_own_and_the_next_ones_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.tools.produce

    fake = _FakeProducer(client_limit=5000, broker_limit=2000)
    monkeypatch.setattr(service.tools.produce, "producer_for", lambda _settings: fake)
    names = ["1-ok.txt", "2-client.txt", "3-ok.txt", "4-broker.txt", "5-mixed.txt"]
    sizes = {"2-client.txt": 6000, "4-broker.txt": 3000}
    for name in names[:4]:
        (tmp_path / name).write_bytes(b"x" * sizes.get(name, 10))
    (tmp_path / "5-mixed.txt").write_text(f"{record(fn='1')} {record(fn='2', text='y' * 3000)}")
    files = [tmp_path / name for name in names]

    report = await service.tools.produce.produce_files(Settings(), files)
    assert (report.files, report.messages, report.bytes) == (2, 2, 20)
    assert [(p.name, why) for p, why in report.failed] == [
        (
            "2-client.txt",
            "6000 bytes, too large to send: [Error 10] MessageSizeTooLargeError: The message is 6000 bytes",
        ),
        ("4-broker.txt", "not acknowledged: [Error 10] MessageSizeTooLargeError"),
        ("5-mixed.txt", "not acknowledged: [Error 10] MessageSizeTooLargeError"),
    ]
    per_record = await service.tools.produce.produce_files(Settings(), files[4:], per_record=True)
    assert [why for _, why in per_record.failed] == [
        "1 of 2 message(s) not sent; first: message 1: not acknowledged: [Error 10] MessageSizeTooLargeError"
    ]
    assert fake.sent[-1] == b"1"


async def test_a_fault_that_is_no_one_files_stops_the_push_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiokafka.errors import KafkaTimeoutError

    import service.tools.produce

    fake = _FakeProducer(client_limit=5000, broker_limit=5000)
    sends = fake.send

    async def send(topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        if key is not None and key.endswith(b"/2.txt"):
            raise KafkaTimeoutError()
        return await sends(topic, value, key)

    monkeypatch.setattr(fake, "send", send)
    monkeypatch.setattr(service.tools.produce, "producer_for", lambda _settings: fake)
    files = [tmp_path / f"{n}.txt" for n in (1, 2, 3)]
    for path in files:
        path.write_text("x")
    report = await service.tools.produce.produce_files(Settings(), files)
    assert (report.files, fake.sent) == (1, [os.fsencode(files[0])])
    assert report.failed == [(p, "not sent, the push stopped: KafkaTimeoutError") for p in files[1:]]


async def test_a_push_draws_its_totals_and_closes_the_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.tools.produce

    monkeypatch.setattr(
        service.tools.produce,
        "producer_for",
        lambda _settings: _FakeProducer(client_limit=5000, broker_limit=5000),
    )
    (tmp_path / "a.txt").write_text(" ".join(record(fn=str(i)) for i in range(3)))
    (tmp_path / "b.txt").write_text(record(fn="9"))
    files = collect_files([tmp_path])
    size = sum(p.stat().st_size for p in files)
    tty = _Tty()
    bar = ProgressBar(tty, size, len(files))
    report = await service.tools.produce.produce_files(Settings(), files, per_record=True, progress=bar)
    assert (report.files, report.messages, report.bytes) == (2, 4, size - 2)  # the records' separators
    assert tty.getvalue().endswith("\n")
    assert _frames(tty)[-1].startswith("100%|")
    assert _frames(tty)[-1].endswith(", 2/2 file(s), 4 message(s)]")


# --- files and the command line -------------------------------------------------------------------


def test_collect_files_walks_directories_and_skips_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("x")
    (tmp_path / "1.txt").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    assert collect_files([tmp_path]) == [tmp_path / "1.txt", tmp_path / "b" / "2.txt"]
    with pytest.raises(BadPath):
        collect_files([tmp_path / "missing"])


def test_hidden_names_are_looked_for_only_below_the_named_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = tmp_path / ".cache" / "p" / "feed"
    (feed / ".git").mkdir(parents=True)
    (feed / "1.txt").write_text("x")
    (feed / ".git" / "HEAD").write_text("x")
    assert collect_files([feed]) == [feed / "1.txt"]
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert collect_files(["../.cache/p/feed"]) == [Path("../.cache/p/feed/1.txt")]


def test_a_directory_with_nothing_to_push_is_an_error_not_a_silent_success(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "hidden-only" / ".git").mkdir(parents=True)
    (tmp_path / "hidden-only" / ".notes").write_text("x")
    (tmp_path / "hidden-only" / ".git" / "HEAD").write_text("x")
    for folder in ("empty", "hidden-only"):
        with pytest.raises(NothingToPush):
            collect_files([tmp_path / folder])
        argv = ["produce", "--bootstrap-servers", "127.0.0.1:1", str(tmp_path / folder)]
        assert main(argv) == ExitStatus.USAGE
        assert capsys.readouterr().err == (
            f"marker-ingest produce: nothing to push under {tmp_path / folder} "
            "(no files; hidden files and directories are skipped)\n"
        )


def test_a_file_name_that_is_not_utf8_is_its_key_byte_for_byte() -> None:
    name = os.fsdecode(b"bad\xffname.txt")
    data = f"{record(fn='1')} {record(fn='')}".encode()
    assert file_messages(data, name, per_record=False) == [(b"bad\xffname.txt", data)]
    assert [k for k, _ in split_records(data, name)] == [b"1", b"bad\xffname.txt"]
    assert split_records(b"\xff", name) == [(b"bad\xffname.txt", b"\xff")]
    assert display_name(name) == "bad\\xffname.txt"


def test_a_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ok.txt").write_text(record(fn="1"))
    argv = ["produce", "--bootstrap-servers", "127.0.0.1:1", str(tmp_path), str(tmp_path / "missing.txt")]
    assert main(argv) == ExitStatus.USAGE
    assert capsys.readouterr().err == (
        f"marker-ingest produce: cannot read {tmp_path / 'missing.txt'}: No such file or directory\n"
    )


# --- what a path is: stdin, devices, FIFOs, links; keys that tell files apart ----------------------


def test_a_path_that_cannot_be_read_says_precisely_why(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone.txt")
    cases = {
        tmp_path / "loop": "Too many levels of symbolic links",
        tmp_path / "dangling": "No such file or directory (a symbolic link to a missing file)",
        tmp_path / "missing.txt": "No such file or directory",
    }
    for path, why in cases.items():
        with pytest.raises(BadPath) as info:
            collect_files([path])
        assert info.value.args == (str(path), why)
    with pytest.raises(BadPath) as info:
        collect_files(["-", "-"])
    assert info.value.args == ("-", "stdin is named more than once")


def test_a_symlink_loop_exits_2_naming_the_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert main(["produce", "--bootstrap-servers", "127.0.0.1:1", str(tmp_path / "loop")]) == ExitStatus.USAGE
    assert capsys.readouterr().err == (
        f"marker-ingest produce: cannot read {tmp_path / 'loop'}: Too many levels of symbolic links\n"
    )


def test_a_named_fifo_device_or_stdin_is_read_like_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert collect_files([fifo, "/dev/null", "-"]) == [fifo, Path("/dev/null"), STDIN]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").write_text("x")
    assert collect_files(["./-"]) == [Path("-")], "a file named '-' is still reachable"


def test_below_a_directory_only_regular_files_are_taken(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")  # reading it would wait for a writer forever
    (tmp_path / "1.txt").write_text("x")
    assert collect_files([tmp_path]) == [tmp_path / "1.txt"]


async def test_files_of_the_same_name_in_two_folders_get_different_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.tools.produce

    fake = _FakeProducer(client_limit=5000, broker_limit=5000)
    monkeypatch.setattr(service.tools.produce, "producer_for", lambda _settings: fake)
    monkeypatch.chdir(tmp_path)
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.txt").write_text(record(fn="1"))
    report = await service.tools.produce.produce_files(Settings(), collect_files(["d1", "d2/a.txt"]))
    assert report.files == 2
    assert fake.sent == [b"d1/a.txt", b"d2/a.txt"]


async def test_stdin_is_pushed_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.tools.produce

    fake = _FakeProducer(client_limit=5000, broker_limit=5000)
    monkeypatch.setattr(service.tools.produce, "producer_for", lambda _settings: fake)
    data = f"{record(fn='7')} {record(fn='')}".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    report = await service.tools.produce.produce_files(Settings(), [STDIN], per_record=True)
    assert (report.files, report.messages, report.bytes) == (1, 2, len(data) - 1)
    assert fake.sent == [b"7", None], "per record: by FN, else no key"


def test_no_path_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["produce"])
    assert exc.value.code == ExitStatus.USAGE


@pytest.mark.parametrize("topic", ["news.articles", "news.dead-letters"])
def test_pushing_to_an_output_topic_exits_2(
    topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["produce", "--topic", topic, str(tmp_path)]) == ExitStatus.USAGE
    assert "--topic must not be the output or dead-letter topic" in capsys.readouterr().err


def test_tool_logging_restores_the_configuration() -> None:
    before, configured = structlog.get_config(), structlog.is_configured()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with tool_logging(Settings(log_format="json", log_level="DEBUG")):
        assert structlog.get_config() != before
        assert root.level == logging.DEBUG
    assert structlog.get_config() == before
    assert structlog.is_configured() == configured
    assert root.handlers == handlers
    assert root.level == level
