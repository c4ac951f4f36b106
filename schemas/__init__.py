"""marker-ingest's published contracts: error codes and event models (JSON Schema beside them)."""

from schemas.errors import ErrorCode
from schemas.events import ArticleData, ArticleIngested, RecordDeadLettered

__all__ = ["ArticleData", "ArticleIngested", "ErrorCode", "RecordDeadLettered"]
