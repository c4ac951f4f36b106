"""``marker-ingest produce`` against a real broker: a directory per file and per record, then the service."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.cli import main
from service.delivery.ingestor import Ingestor
from tests.conftest import BrokerHandle
from tests.support import (
    Ledger,
    Sent,
    Topics,
    expected_outcomes,
    read_all,
    record,
    service_env,
    settings_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in list(os.environ):
        if name.startswith(("INGEST_", "KAFKA_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(("INGEST_", "KAFKA_")):
            monkeypatch.setenv(name, value)


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    """Three files in a tree (five records, one with an impossible date) and a hidden file."""
    root = tmp_path / "feed"
    (root / "more").mkdir(parents=True)
    (root / "01-one.txt").write_text(record(1) + "\n", encoding="utf-8")
    (root / "02-multi.txt").write_text(
        "\n".join([record(2), record(3, date="2024-02-30"), record(4)]) + "\n", encoding="utf-8"
    )
    (root / "more" / "03-bom.txt").write_bytes(b"\xef\xbb\xbf" + record(5).encode())
    (root / ".notes").write_text("not marker text", encoding="utf-8")
    return root


def _files(root: Path) -> list[tuple[bytes, bytes]]:
    """(key: the path, contents) of the marker-text files under ``root``, sorted."""
    return sorted((os.fsencode(p), p.read_bytes()) for p in root.rglob("*.txt"))


async def _ingest_and_check(broker: BrokerHandle, topics: Topics) -> list[Any]:
    """Run the service over what was pushed; check the accounting; return the input records."""
    inputs = await read_all(broker.bootstrap_servers, topics.input)
    sent = [Sent(r.partition, r.offset, r.key, r.value) for r in inputs]
    settings = settings_for(broker.bootstrap_servers, topics, idempotence=broker.idempotence, burst=True)
    assert await Ingestor(settings).run() == 0
    ledger = await Ledger.read(broker.bootstrap_servers, topics)
    ledger.check(expected_outcomes(sent, topics.input), exactly_once=True)
    articles = [orjson.loads(r.value) for r in await read_all(broker.bootstrap_servers, topics.output)]
    assert sorted(a["data"]["fn"] for a in articles) == [1, 2, 4, 5]
    [dead] = [orjson.loads(r.value) for r in await read_all(broker.bootstrap_servers, topics.dlq)]
    assert dead["error"]["code"] == "invalid_field"
    return inputs


@pytest.mark.smoke
async def test_produce_pushes_a_directory_one_message_per_file(
    broker: BrokerHandle, feed_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = await Topics.unique("produce-files").create(broker.bootstrap_servers, partitions=2)
    _use_env(monkeypatch, service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence))

    capsys.readouterr()
    assert await asyncio.to_thread(main, ["produce", str(feed_dir)]) == 0
    out, err = capsys.readouterr()
    files = _files(feed_dir)
    size = sum(len(data) for _, data in files)
    assert out.startswith(f"pushed 3 file(s) as 3 message(s), {size} bytes, to {topics.input} in ")
    assert out.endswith(" messages/s)\n")
    assert "\r" not in err, "no progress bar when stderr is not a terminal"

    inputs = await _ingest_and_check(broker, topics)
    assert sorted((r.key, r.value) for r in inputs) == files


async def test_produce_per_record_in_a_subprocess(broker: BrokerHandle, feed_dir: Path) -> None:
    topics = await Topics.unique("produce-records").create(broker.bootstrap_servers, partitions=2)
    env = service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence)

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "produce", "--per-record", str(feed_dir)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().startswith("pushed 3 file(s) as 5 message(s), ")

    inputs = await _ingest_and_check(broker, topics)
    assert sorted(r.key for r in inputs) == [b"1", b"2", b"3", b"4", b"5"]
    by_key = {r.key: r.value for r in inputs}
    assert by_key[b"3"] == record(3, date="2024-02-30").encode()
    assert by_key[b"5"] == record(5).encode(), "the BOM is not carried into the record's message"


async def test_lint_refuses_a_bad_file_and_pushes_the_rest(
    broker: BrokerHandle,
    feed_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = await Topics.unique("produce-lint").create(broker.bootstrap_servers)
    env = service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence)
    _use_env(monkeypatch, dict(env, INGEST_INPUT_TOPIC=f"{topics.input}.unused"))
    words = tmp_path / "words.txt"
    words.write_text("no markers at all", encoding="utf-8")

    capsys.readouterr()
    argv = ["produce", "--lint", "--topic", topics.input, str(feed_dir), str(words)]
    assert await asyncio.to_thread(main, argv) == 1
    out, err = capsys.readouterr()
    multi = feed_dir / "02-multi.txt"
    bad_at = multi.read_bytes().index(b"2024-02-30")
    refused = err.splitlines()
    assert len(refused) == 2, err
    assert refused[0].startswith(f"refused {multi}: message 0 record 1: invalid_field at {bad_at}: ")
    assert refused[1].startswith(f"refused {words}: message 0 record 0: no_markers: ")
    assert out.startswith("pushed 2 file(s) as 2 message(s), ")
    assert out.endswith("; refused 2 file(s)\n")

    inputs = await read_all(broker.bootstrap_servers, topics.input)
    assert sorted(r.key for r in inputs) == [
        os.fsencode(feed_dir / "01-one.txt"),
        os.fsencode(feed_dir / "more" / "03-bom.txt"),
    ]


async def test_a_file_too_large_to_send_is_reported_and_the_next_files_are_pushed(
    broker: BrokerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = await Topics.unique("produce-large").create(broker.bootstrap_servers)
    # The producer's request limit is 2 x INGEST_MAX_PAYLOAD_BYTES + 1 MiB: 1,050,624 bytes here.
    env = service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence)
    _use_env(monkeypatch, dict(env, INGEST_MAX_PAYLOAD_BYTES="1024"))
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / "1.txt").write_text(record(1), encoding="utf-8")
    big = feed / "2-big.txt"
    big.write_bytes(b"x" * 1_200_000)
    (feed / "3.txt").write_text(record(3), encoding="utf-8")
    per_record = feed / "4-records.txt"
    per_record.write_text(record(4) + " " + record(5, text="y" * 1_100_000), encoding="utf-8")

    for argv in (["produce", str(feed)], ["produce", "--per-record", str(feed)]):
        capsys.readouterr()
        assert await asyncio.to_thread(main, argv) == 1
        out, err = capsys.readouterr()
        assert out.startswith("pushed 2 file(s) as 2 message(s), "), out
        assert out.endswith("; failed 2 file(s)\n")
        failed = [line for line in err.splitlines() if line.startswith("failed ")]
        assert len(failed) == 2, err
        assert failed[0].startswith(
            f"failed {big}: 1200000 bytes, too large to send: [Error 10] MessageSizeTooLargeError"
        )
        if "--per-record" in argv:
            assert failed[1].startswith(
                f"failed {per_record}: 1 of 2 message(s) not sent; first: message 1: "
            )
        else:
            assert failed[1].startswith(f"failed {per_record}: {per_record.stat().st_size} bytes, too large")

    inputs = await read_all(broker.bootstrap_servers, topics.input)
    assert sorted(r.key for r in inputs) == sorted(
        [b"1", os.fsencode(feed / "1.txt"), b"3", os.fsencode(feed / "3.txt"), b"4"]
    )


async def test_a_file_name_that_is_not_utf8_is_pushed_with_its_name_as_the_key(
    broker: BrokerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = await Topics.unique("produce-odd-name").create(broker.bootstrap_servers)
    _use_env(monkeypatch, service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence))
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / os.fsdecode(b"bad\xffname.txt")).write_text(record(1), encoding="utf-8")
    (feed / os.fsdecode(b"words\xfe.txt")).write_text("no markers", encoding="utf-8")

    capsys.readouterr()
    assert await asyncio.to_thread(main, ["produce", "--lint", str(feed)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("pushed 1 file(s) as 1 message(s), ")
    # aiokafka's own warnings (a topic's metadata not ready yet) may come first.
    refused = f"refused {feed}/words\\xfe.txt: message 0 record 0: no_markers: "
    assert any(line.startswith(refused) for line in err.splitlines()), err
    [pushed] = await read_all(broker.bootstrap_servers, topics.input)
    assert pushed.key == os.fsencode(feed) + b"/bad\xffname.txt"


async def test_a_folder_below_a_hidden_one_is_pushed(
    broker: BrokerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = await Topics.unique("produce-dot-path").create(broker.bootstrap_servers)
    _use_env(monkeypatch, service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence))
    feed = tmp_path / ".cache" / "feed"
    feed.mkdir(parents=True)
    (feed / "1.txt").write_text(record(1), encoding="utf-8")
    monkeypatch.chdir(feed)

    capsys.readouterr()
    assert await asyncio.to_thread(main, ["produce", "../feed"]) == 0
    assert capsys.readouterr().out.startswith("pushed 1 file(s) as 1 message(s), ")
    [pushed] = await read_all(broker.bootstrap_servers, topics.input)
    assert pushed.key == b"../feed/1.txt"


async def _produce_process(
    env: dict[str, str], *argv: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "produce", *argv],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=120,
    )


async def test_stdin_a_fifo_and_dev_null_are_pushed_like_files(broker: BrokerHandle, tmp_path: Path) -> None:
    topics = await Topics.unique("produce-special").create(broker.bootstrap_servers)
    env = service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write_fifo() -> None:
        with open(fifo, "wb") as writer:  # blocks until produce opens it for reading
            writer.write(record(2).encode())

    writer = asyncio.create_task(asyncio.to_thread(write_fifo))
    proc = await _produce_process(env, "-", str(fifo), "/dev/null", stdin=record(1).encode())
    await asyncio.wait_for(writer, 10)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().startswith(f"pushed 3 file(s) as 3 message(s), {2 * len(record(1))} bytes")

    inputs = {r.key: r.value for r in await read_all(broker.bootstrap_servers, topics.input)}
    assert inputs == {None: record(1).encode(), os.fsencode(fifo): record(2).encode(), b"/dev/null": b""}


async def test_per_record_from_stdin_keys_each_record_by_its_fn(broker: BrokerHandle) -> None:
    topics = await Topics.unique("produce-stdin").create(broker.bootstrap_servers)
    env = service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence)
    proc = await _produce_process(env, "--per-record", "-", stdin=f"{record(1)} {record(2)}".encode())
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert sorted(r.key for r in await read_all(broker.bootstrap_servers, topics.input)) == [b"1", b"2"]


async def test_files_of_one_name_in_two_folders_are_two_keys(broker: BrokerHandle, tmp_path: Path) -> None:
    topics = await Topics.unique("produce-keys").create(broker.bootstrap_servers)
    env = service_env(broker.bootstrap_servers, topics, idempotence=broker.idempotence)
    for n, folder in enumerate(("d1", "d2"), start=1):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.txt").write_text(record(n), encoding="utf-8")
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "produce", "d1", "d2/a.txt"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    inputs = {r.key: r.value for r in await read_all(broker.bootstrap_servers, topics.input)}
    assert inputs == {b"d1/a.txt": record(1).encode(), b"d2/a.txt": record(2).encode()}
