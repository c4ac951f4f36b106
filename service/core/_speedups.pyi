from typing import TypeVar

_R = TypeVar("_R", bound=tuple[object, ...])

def scan_clean(record_type: type[_R], text: str, max_records: int, /) -> list[_R] | None: ...
