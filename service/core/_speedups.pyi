from typing import TypeVar

_R = TypeVar("_R", bound=tuple[object, ...])
_O = TypeVar("_O", bound=tuple[object, ...])

def scan_clean(record_type: type[_R], text: str, max_records: int, /) -> list[_R] | None: ...
def articles(
    outcome_type: type[_O],
    payload: bytes,
    id_prefix: str,
    first_index: int,
    source_uri: str,
    time: str,
    topic: str,
    partition: int,
    offset: int,
    traceparent: str | None,
    max_records: int,
    max_title_chars: int,
    max_text_chars: int,
    max_event_bytes: int,
    /,
) -> list[_O] | None: ...
