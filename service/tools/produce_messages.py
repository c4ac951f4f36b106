"""What ``marker-ingest produce`` pushes, before any Kafka client: the files a push takes
(``collect_files``: paths named, the files under directories named, ``-`` for stdin), the messages
each file becomes (one per file keyed by its path, or ``split_records``: one per record keyed by its
FN), and the lint (``first_problem``: the first dead letter the core would make of them).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from service import __version__
from service.core.events import Source, describe_dead_letter, process_payload
from service.core.limits import Limits
from service.core.message import strip_bom
from service.core.parser import Problem, scan
from service.tools.command import display_name

Message = tuple[bytes | None, bytes]
"""A (key, value) pair to send."""


STDIN = Path("/dev/stdin")
"""What ``-`` stands for among the paths: read from ``sys.stdin``, sent without a key."""


class NothingToPush(Exception):
    """A directory named on the command line holds no file to push (hidden ones are skipped)."""


class BadPath(Exception):
    """A path named on the command line cannot be pushed: ``args`` are the path and why not."""


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the files under directories named (sorted); ``-`` is stdin (``STDIN``).

    A path named is read whatever it is but a directory (a regular file, a FIFO, ``/dev/null``,
    ``<(command)``); below a named directory only regular files are taken, and hidden files and
    directories (a name starting with a dot) are skipped; the path of the named directory itself
    may have any name (``../feed``, ``~/.cache/feed``). Raises ``BadPath`` for a path that cannot be
    read (missing, a symbolic link loop, no permission; stdin named twice) and ``NothingToPush``
    for a directory without a file to push.
    """
    files: list[Path] = []
    for raw in paths:
        if str(raw) == "-":
            if STDIN in files:
                raise BadPath("-", "stdin is named more than once")
            files.append(STDIN)
            continue
        path = Path(raw)
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise BadPath(str(path), _why_not(path, exc)) from None
        if not stat.S_ISDIR(mode):
            files.append(path)
            continue
        found = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)
        ]
        if not found:
            raise NothingToPush(str(path))
        files.extend(found)
    return files


def _why_not(path: Path, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT and path.is_symlink():
        return f"{why} (a symbolic link to a missing file)"
    return why


def key_of(path: Path) -> str | None:
    """The key a file's message gets: its path as named (stdin has none)."""
    return None if path == STDIN else str(path)


def shown(path: Path) -> str:
    """A file as messages name it: ``stdin``, or its path as printable text."""
    return "stdin" if path == STDIN else display_name(path)


def split_records(data: bytes, name: str | None) -> list[Message]:
    """One message per record of ``data``, keyed by its FN (else by ``name``, if any).

    Records are split by the core's scanner (``rec.start..rec.end``, trimmed). A file the scanner
    cannot split (not UTF-8, no markers) stays one message keyed by ``name``, so the service
    dead-letters it with the precise reason.
    """
    fallback = None if name is None else os.fsencode(name)
    whole: list[Message] = [(fallback, data)]
    try:
        text = strip_bom(data).decode("utf-8")
    except UnicodeDecodeError:
        return whole
    records = scan(text, len(text) + 1)
    if isinstance(records, Problem):
        return whole
    messages: list[Message] = []
    for rec in records:
        chunk = text[rec.start : rec.end].strip()
        fn = rec.fields.get("fn")
        key = fn.value.encode() if fn is not None and fn.value else fallback
        messages.append((key, chunk.encode()))
    return messages or whole


def file_messages(data: bytes, name: str | None, *, per_record: bool) -> list[Message]:
    """The messages a file becomes; ``name`` is its key (None: no key)."""
    if per_record:
        return split_records(data, name)
    return [(None if name is None else os.fsencode(name), data)]


def first_problem(messages: Iterable[Message], limits: Limits, *, name: str) -> str | None:
    """The first dead letter the core would make of these messages, described; None when all pass."""
    now = dt.datetime.now(dt.UTC)
    for index, (key, value) in enumerate(messages):
        source = Source(topic=name, partition=0, offset=index, key=key)
        for outcome in process_payload(value, source, limits, now=now, version=__version__):
            if outcome.error is not None:
                return f"message {index} record {outcome.record_index}: {describe_dead_letter(outcome.value)}"
    return None
