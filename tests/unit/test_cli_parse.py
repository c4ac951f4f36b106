"""``marker-ingest parse``: the core over files, offline. Exit 0 clean, 1 with dead letters, 2 on usage."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from markertext import FIXTURES, record

from schemas.events import ArticleIngested, RecordDeadLettered
from service.cli import main
from service.errors import ExitStatus

SEED = FIXTURES / "seed_2433.txt"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads settings from the environment: start every test from the defaults."""
    for name in list(os.environ):
        if name.startswith(("INGEST_", "KAFKA_")):
            monkeypatch.delenv(name)


def _lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines()]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Three records: good, stray text (which belongs to the record before it), good."""
    path = tmp_path / "mixed.txt"
    path.write_text(" ".join([record(fn="1"), record(fn="2"), "junk", record(fn="3")]), encoding="utf-8")
    return path


def test_exit_codes_are_0_1_2_and_commands_return_them(tmp_path: Path) -> None:
    assert (ExitStatus.OK, ExitStatus.FAILED, ExitStatus.USAGE) == (0, 1, 2)
    (tmp_path / "bad.txt").write_bytes(b"no markers")
    statuses = [
        main(["parse", str(SEED)]),
        main(["parse", str(tmp_path / "bad.txt")]),
        main(["parse", str(tmp_path / "missing.txt")]),
    ]
    assert statuses == [ExitStatus.OK, ExitStatus.FAILED, ExitStatus.USAGE]
    assert all(type(status) is ExitStatus for status in statuses), "one name for each status"


def test_a_clean_file_exits_0_and_prints_its_article(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", str(SEED)]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n")
    lines = out.splitlines()
    assert len(lines) == 1
    article = ArticleIngested.model_validate_json(lines[0])
    assert article.data.fn == 2433
    assert article.data.title == "Mediators push for Gaza ceasefire but gaps remain"
    assert article.kafkatopic == str(SEED)
    assert article.id == f"{SEED}:0:0:0"
    assert err == "1 file(s), 1 record(s): 1 article(s), 0 dead letter(s)\n"


def test_dead_letters_exit_1_and_are_described_on_stderr(
    mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["parse", str(mixed)]) == 1
    out, err = capsys.readouterr()
    assert [line["data"]["fn"] for line in _lines(out)] == [1, 3]  # type: ignore[index]
    position = mixed.read_text().index("junk")
    assert err.splitlines() == [
        f"{mixed}: record 1: stray_text at {position}: text outside any field: 'junk'",
        "1 file(s), 3 record(s): 2 article(s), 1 dead letter(s) (stray_text=1)",
    ]


def test_dead_letters_option_writes_json_lines(
    mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_path = tmp_path / "out" / "dead.jsonl"
    dead_path.parent.mkdir()
    assert main(["parse", "--dead-letters", str(dead_path), str(mixed)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert err.splitlines() == ["1 file(s), 3 record(s): 2 article(s), 1 dead letter(s) (stray_text=1)"]
    raw = dead_path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.splitlines()
    assert len(lines) == 1
    dead = RecordDeadLettered.model_validate_json(lines[0])
    assert dead.error.code == "stray_text"
    assert dead.id == f"{mixed}:0:0:1"
    assert dead.source.topic == str(mixed)


def test_dead_letters_file_is_written_empty_when_all_is_well(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_path = tmp_path / "dead.jsonl"
    assert main(["parse", str(SEED), "--dead-letters", str(dead_path)]) == 0
    assert dead_path.read_bytes() == b""
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_stdin_is_read_for_a_dash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = (record(fn="77") + " " + record(fn="78")).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    assert main(["parse", "-"]) == 0
    out, err = capsys.readouterr()
    events = [ArticleIngested.model_validate_json(line) for line in out.splitlines()]
    assert [(e.data.fn, e.id, e.kafkatopic) for e in events] == [
        (77, "stdin:0:0:0", "stdin"),
        (78, "stdin:0:0:1", "stdin"),
    ]
    assert err == "1 file(s), 2 record(s): 2 article(s), 0 dead letter(s)\n"


def test_several_files_take_their_index_as_offset(
    mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe")))
    dead_path = tmp_path / "dead.jsonl"
    assert main(["parse", str(SEED), "-", str(mixed), "--dead-letters", str(dead_path)]) == 1
    out, err = capsys.readouterr()
    assert [line["id"] for line in _lines(out)] == [f"{SEED}:0:0:0", f"{mixed}:0:2:0", f"{mixed}:0:2:2"]
    dead = [RecordDeadLettered.model_validate_json(line) for line in dead_path.read_bytes().splitlines()]
    assert [(d.id, d.error.code, d.scope) for d in dead] == [
        ("stdin:0:1:0", "invalid_encoding", "payload"),
        (f"{mixed}:0:2:1", "stray_text", "record"),
    ]
    assert err.splitlines()[-1] == (
        "3 file(s), 5 record(s): 3 article(s), 2 dead letter(s) (invalid_encoding=1, stray_text=1)"
    )


def test_max_payload_bytes_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", "--max-payload-bytes", "100", str(SEED)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{SEED}: record 0: payload_too_large: " in err
    assert err.splitlines()[-1].endswith("(payload_too_large=1)")


def test_an_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.txt"
    assert main(["parse", str(SEED), str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"marker-ingest parse: cannot read {missing}: ")


def test_a_directory_is_unreadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["parse"],
        [],
        ["parse", "--max-payload-bytes", "lots", "x"],
        ["parse", "--no-such-flag", "x"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    assert "usage: marker-ingest" in capsys.readouterr().err


def test_invalid_settings_from_a_flag_exit_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", "--max-payload-bytes", "-5", str(SEED)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "marker-ingest: invalid setting --max-payload-bytes: should be greater than or equal to 1, got -5\n"
    )


def test_a_zero_max_payload_bytes_flag_is_rejected_not_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", "--max-payload-bytes", "0", str(SEED)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("marker-ingest: invalid setting --max-payload-bytes: ")


def test_invalid_settings_from_the_environment_exit_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INGEST_MAX_TITLE_CHARS", "0")
    assert main(["parse", str(SEED)]) == 2
    assert capsys.readouterr().err == (
        "marker-ingest: invalid setting INGEST_MAX_TITLE_CHARS: should be greater than or equal to 1, "
        "got '0'\n"
    )


def test_limits_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INGEST_MAX_TITLE_CHARS", "10")
    assert main(["parse", str(SEED)]) == 1
    assert f"{SEED}: record 0: invalid_field at " in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8_is_parsed_like_any_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = Path(os.fsdecode(bytes(tmp_path) + b"/good\xffname.txt"))
    good.write_bytes(record(fn="7").encode())
    bad = Path(os.fsdecode(bytes(tmp_path) + b"/bad\xffname.txt"))
    bad.write_bytes(b"no markers")
    assert main(["parse", str(good)]) == ExitStatus.OK
    out, _ = capsys.readouterr()
    [article] = _lines(out)
    assert article["kafkatopic"] == f"{tmp_path}/good\\xffname.txt"
    assert main(["parse", str(bad)]) == ExitStatus.FAILED
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path}/bad\\xffname.txt: record 0: no_markers")


def test_python_dash_m_service_parse(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_"))}
    done = subprocess.run(
        [sys.executable, "-m", "service", "parse", str(SEED)],
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert ArticleIngested.model_validate_json(lines[0]).data.fn == 2433
    assert done.stderr == b"1 file(s), 1 record(s): 1 article(s), 0 dead letter(s)\n"

    dead_path = tmp_path / "dead.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "service", "parse", "--dead-letters", str(dead_path), "-"],
        input=b"no markers at all",
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == b""
    dead = RecordDeadLettered.model_validate_json(dead_path.read_bytes())
    assert (dead.error.code, dead.id) == ("no_markers", "stdin:0:0:0")


# --- outputs that cannot be written: one line, exit 2, no traceback -----------------------------------


@pytest.mark.parametrize("where", ["missing folder", "directory"])
def test_a_dead_letters_path_that_cannot_be_written_exits_2_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    path = tmp_path / "nonexistent" / "x" if where == "missing folder" else tmp_path
    reason = "No such file or directory" if where == "missing folder" else "Is a directory"
    assert main(["parse", "--dead-letters", str(path), str(SEED)]) == ExitStatus.USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"marker-ingest parse: cannot write {path}: {reason}\n"


def _parse_process(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_"))}
    return subprocess.run(
        [sys.executable, "-m", "service", "parse", *argv],
        env=env,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_on_a_full_disk_is_one_line_and_exit_2() -> None:
    with open("/dev/full", "wb") as full:
        done = _parse_process([str(SEED)], stdout=full)
    assert done.returncode == ExitStatus.USAGE
    assert done.stderr == b"marker-ingest parse: cannot write stdout: No space left on device\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_dead_letters_on_a_full_disk_are_one_line_and_exit_2(mixed: Path) -> None:
    done = _parse_process(["--dead-letters", "/dev/full", str(mixed)], stdout=subprocess.DEVNULL)
    assert done.returncode == ExitStatus.USAGE
    assert done.stderr == b"marker-ingest parse: cannot write /dev/full: No space left on device\n"


def test_stdout_closed_by_its_reader_ends_quietly_with_exit_2() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as after `| head -0`
    try:
        done = _parse_process([str(SEED)], stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == ExitStatus.USAGE
    assert done.stderr == b""
