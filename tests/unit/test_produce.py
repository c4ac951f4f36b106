"""The pure part of ``marker-ingest produce``: splitting, linting, the progress bar, the summary."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
import structlog
from markertext import record

from service.cli import EXIT_USAGE, main
from service.limits import Limits
from service.produce import (
    ProgressBar,
    PushReport,
    collect_files,
    file_messages,
    first_problem,
    render_bar,
    render_summary,
    split_records,
    tool_logging,
)
from service.settings import Settings


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


def test_render_bar() -> None:
    line = render_bar(done_bytes=50, total_bytes=100, files=1, total_files=2, messages=3, width=10)
    assert line == "[#####-----]  50%  1/2 file(s)  3 message(s)"
    assert render_bar(done_bytes=0, total_bytes=0, files=0, total_files=0, messages=0, width=4).startswith(
        "[####] 100%"
    )
    assert render_bar(done_bytes=7, total_bytes=5, files=1, total_files=1, messages=1, width=4).startswith(
        "[####] 100%"
    )


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_draws_on_a_terminal_only_and_throttles() -> None:
    quiet = io.StringIO()
    bar = ProgressBar(quiet, 100, 2)
    bar.file_done(50)
    bar.message_sent(50)
    bar.close()
    assert quiet.getvalue() == ""

    now = [0.0]
    tty = _Tty()
    bar = ProgressBar(tty, 100, 2, clock=lambda: now[0], interval=1.0)
    bar.file_done(50)
    bar.message_sent(50)  # within the interval: not drawn
    now[0] = 2.0
    bar.message_sent(10)
    bar.file_done(50)  # within the interval again
    bar.close()
    frames = tty.getvalue().split("\r")[1:]
    assert frames == [
        render_bar(done_bytes=50, total_bytes=100, files=1, total_files=2, messages=0),
        render_bar(done_bytes=50, total_bytes=100, files=1, total_files=2, messages=2),
        render_bar(done_bytes=100, total_bytes=100, files=2, total_files=2, messages=2) + "\n",
    ]


def test_render_summary() -> None:
    report = PushReport(files=3, messages=12, bytes=4096, seconds=2.0)
    assert render_summary(report, "news.raw") == (
        "pushed 3 file(s) as 12 message(s), 4096 bytes, to news.raw in 2.00 s (6.0 messages/s)\n"
    )
    report.refused.append((Path("bad.txt"), "no_markers"))
    assert render_summary(report, "t").endswith("(6.0 messages/s); refused 1 file(s)\n")
    assert PushReport().messages_per_second == 0.0


# --- files and the command line -------------------------------------------------------------------


def test_collect_files_walks_directories_and_skips_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("x")
    (tmp_path / "1.txt").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    assert collect_files([tmp_path]) == [tmp_path / "1.txt", tmp_path / "b" / "2.txt"]
    with pytest.raises(FileNotFoundError):
        collect_files([tmp_path / "missing"])


def test_a_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ok.txt").write_text(record(fn="1"))
    argv = ["produce", "--bootstrap-servers", "127.0.0.1:1", str(tmp_path), str(tmp_path / "missing.txt")]
    assert main(argv) == EXIT_USAGE
    assert f"no such file or directory: {tmp_path / 'missing.txt'}" in capsys.readouterr().err


def test_no_path_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["produce"])
    assert exc.value.code == EXIT_USAGE


@pytest.mark.parametrize("topic", ["news.articles", "news.dead-letters"])
def test_pushing_to_an_output_topic_exits_2(
    topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["produce", "--topic", topic, str(tmp_path)]) == EXIT_USAGE
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
