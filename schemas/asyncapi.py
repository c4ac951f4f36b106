"""The AsyncAPI 3.0.0 document of the service's channels: the raw feed it consumes, the article
events and the dead letters (and redrive markers) it publishes, with their headers and Kafka
bindings. ``python -m schemas.generate`` writes it as ``asyncapi.yaml``; its payloads refer to the
JSON Schema files beside it.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from schemas.defaults import BY_FIELD
from schemas.errors import ErrorCode
from schemas.events import (
    ARTICLE_DATASCHEMA,
    ARTICLE_EVENT_TYPE,
    ARTICLE_SCHEMA_FILE,
    CLOUDEVENTS_CONTENT_TYPE,
    DEAD_LETTER_EVENT_TYPE,
    DEAD_LETTER_SCHEMA,
    DEAD_LETTER_SCHEMA_FILE,
    DROPPED_HEADER,
    ERROR_CODE_HEADER,
    ORIGIN_HEADER,
    ORIGIN_TAG_HEADER,
    ORIGIN_TRACEPARENT_HEADER,
    REDRIVE_COUNT_HEADER,
    REDRIVE_MARKER_SCHEMA,
    REDRIVE_MARKER_SCHEMA_FILE,
    REDRIVE_MARKER_TYPE,
    REDRIVEN_HEADER,
    TRACEPARENT_PATTERN,
)

KAFKA_BINDING_VERSION = "0.5.0"


def _default(field: str) -> str:
    """A setting's default, never the environment's value: the document must not depend on it."""
    return BY_FIELD[field].value


def _variable(field: str) -> str:
    """The environment variable that sets a setting."""
    return BY_FIELD[field].variable


def _channel(field: str, title: str, description: str, *messages: str) -> dict[str, Any]:
    """A channel at the default topic of the setting ``field``, carrying ``messages``."""
    return {
        "address": _default(field),
        "title": title,
        "description": f"{description} The address is the default; {_variable(field)} names another topic.",
        "messages": {message: {"$ref": f"#/components/messages/{message}"} for message in messages},
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the service's three channels and what it does with them."""
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "marker-ingest",
            "version": importlib.metadata.version("marker-ingest"),
            "description": (
                "Consumes marker-text news feeds and publishes one event per record: a CloudEvents 1.0 "
                "article event for a valid record, a dead-letter event for a record (or a whole "
                "payload) that could not become an article. Topic names are configurable; the "
                "addresses below are the defaults."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "{bootstrapServers}",
                "protocol": "kafka",
                "description": f"Any Kafka-protocol cluster ({_variable('kafka_bootstrap_servers')}).",
                "variables": {
                    "bootstrapServers": {
                        "default": _default("kafka_bootstrap_servers"),
                        "description": _variable("kafka_bootstrap_servers"),
                    }
                },
            }
        },
        "channels": {
            "rawFeed": _channel(
                "input_topic",
                "Raw feed",
                "Marker-text news feeds, one or more records per message.",
                "rawFeed",
            ),
            "articles": _channel(
                "output_topic", "Articles", "One article event per valid record.", "articleIngested"
            ),
            "deadLetters": _channel(
                "dlq_topic",
                "Dead letters",
                "One dead-letter event per invalid record, or one per payload when the whole message "
                "failed; and, written by redrive, one redrive marker per dead letter whose input it "
                "published.",
                "recordDeadLettered",
                "recordRedriven",
            ),
        },
        "operations": {
            "receiveRawFeed": {
                "action": "receive",
                "channel": {"$ref": "#/channels/rawFeed"},
                "summary": f"Consume feeds in a consumer group ({_variable('group_id')}).",
                "messages": [{"$ref": "#/channels/rawFeed/messages/rawFeed"}],
                "bindings": {
                    "kafka": {
                        "groupId": {"type": "string", "default": _default("group_id")},
                        "clientId": {"type": "string", "default": _default("kafka_client_id")},
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                },
            },
            "sendArticleIngested": {
                "action": "send",
                "channel": {"$ref": "#/channels/articles"},
                "summary": "Publish an article event for each valid record.",
                "messages": [{"$ref": "#/channels/articles/messages/articleIngested"}],
            },
            "sendRecordDeadLettered": {
                "action": "send",
                "channel": {"$ref": "#/channels/deadLetters"},
                "summary": "Publish a dead-letter event for each record or payload that failed.",
                "messages": [{"$ref": "#/channels/deadLetters/messages/recordDeadLettered"}],
            },
            "sendRecordRedriven": {
                "action": "send",
                "channel": {"$ref": "#/channels/deadLetters"},
                "summary": "marker-ingest redrive: a marker for each dead letter whose input it published "
                "(in the same transaction as that input with INGEST_DELIVERY=exactly-once), so that no "
                "later redrive publishes it again.",
                "messages": [{"$ref": "#/channels/deadLetters/messages/recordRedriven"}],
            },
        },
        "components": {
            "messages": {
                "rawFeed": {
                    "name": "rawFeed",
                    "title": "Marker-text feed",
                    "summary": "One or more records of marker text, UTF-8 (a leading BOM is ignored).",
                    "description": (
                        "Each record is a run of fields `<NAME>-S-T-A-R-T. value <NAME>-E-N-D.`; an "
                        "F-N field starts a new record. FN, DATE, TITLE and TEXT are required; other "
                        "fields are kept as extras. See docs/format.md."
                    ),
                    "contentType": "text/plain",
                    "headers": {
                        "type": "object",
                        "properties": {
                            ERROR_CODE_HEADER: {
                                "type": "string",
                                "description": "Set by the service on dead letters. On input (a redriven "
                                "dead letter) it is dropped, so a stale code is never carried over.",
                            },
                            ORIGIN_HEADER: {
                                "type": "string",
                                "pattern": "^[A-Za-z0-9._-]+:[0-9]+:[0-9]+:[0-9]+$",
                                "description": "Set by redrive: the id of the record (or, for a whole "
                                "payload, its first record) the message was made from. The message's "
                                "events take the ids that follow it (record i: the origin's record index "
                                "+ i), so a record redriven twice keeps one id. Honoured only with a "
                                f"valid {ORIGIN_TAG_HEADER}; ignored (the records keep their own "
                                "coordinates as ids) when malformed, untagged or wrongly tagged.",
                            },
                            ORIGIN_TAG_HEADER: {
                                "type": "string",
                                "pattern": "^[0-9a-f]{64}$",
                                "description": "Set by redrive: HMAC-SHA256, keyed with the secret "
                                "INGEST_REDRIVE_KEY that the service and redrive share, over the origin "
                                "and the message value (docs/contracts.md, Who chooses an event id). It "
                                "proves that redrive set the origin (and its trace, "
                                f"{ORIGIN_TRACEPARENT_HEADER}) for exactly this value.",
                            },
                            ORIGIN_TRACEPARENT_HEADER: {
                                "type": "string",
                                "pattern": TRACEPARENT_PATTERN,
                                "description": "Set by redrive, copied from the dead letter: the trace the "
                                "original record started. With a valid origin tag (which binds it), the "
                                "article's CloudEvents traceparent attribute is this one, so a redriven "
                                "record keeps its original trace.",
                            },
                            REDRIVE_COUNT_HEADER: {
                                "type": "string",
                                "pattern": "^[0-9]{1,9}$",
                                "description": "Set by redrive: how many times the message was redriven. "
                                "Copied onto the message's dead letters; a malformed one is not, and "
                                "counts as 0.",
                            },
                            "traceparent": {
                                "type": "string",
                                "description": "W3C Trace Context: when valid, the parent of the "
                                "message's work: the article's CloudEvents traceparent attribute (the "
                                "trace the record starts); with tracing off also each event's traceparent "
                                "header, with tracing on a link of the service's process span. An invalid "
                                "one (or two of them) is ignored, never a dead letter.",
                            },
                            "tracestate": {
                                "type": "string",
                                "description": "W3C Trace Context: passed on with a valid traceparent "
                                "(several are joined by commas; one over 512 bytes or not ASCII is dropped).",
                            },
                        },
                        "additionalProperties": {
                            "description": "Not read; copied onto the message's dead letters, if any, "
                            "except content-type, ce_*, traceparent, tracestate and the service's own "
                            "marker-ingest-* headers."
                        },
                    },
                    "payload": {"type": "string", "description": "Marker text."},
                    "bindings": {
                        "kafka": {
                            "key": {
                                "type": ["string", "null"],
                                "description": (
                                    "Optional, any bytes. Not parsed; copied as the key of the "
                                    "message's dead letters, and base64 into source.key_base64."
                                ),
                            },
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    },
                },
                "articleIngested": {
                    "name": "articleIngested",
                    "title": "Article ingested",
                    "summary": f"A CloudEvents 1.0 event (structured JSON mode), type {ARTICLE_EVENT_TYPE}.",
                    "description": (
                        "The event id is deterministic from the input coordinates, so a redelivered "
                        "input yields the same ids: deduplicate on id. Schema: "
                        f"{ARTICLE_DATASCHEMA} (JSON Schema draft 2020-12)."
                    ),
                    "contentType": "application/cloudevents+json",
                    "headers": {
                        "type": "object",
                        "required": ["content-type"],
                        "properties": {
                            "content-type": {
                                "type": "string",
                                "const": CLOUDEVENTS_CONTENT_TYPE,
                                "description": "CloudEvents' Kafka protocol binding, structured content "
                                "mode: the value is the whole event in the JSON event format.",
                            },
                            "traceparent": {
                                "type": "string",
                                "description": "Tracing on: the context of the service's send span "
                                "that wrote the event (always). Tracing off: the input's W3C traceparent, "
                                "when it had a valid one, as it came. Left out only when the record would "
                                "not fit INGEST_MAX_EVENT_BYTES (the event's traceparent attribute still "
                                "names the trace).",
                            },
                            "tracestate": {
                                "type": "string",
                                "description": "The input's tracestate, with the traceparent (left out "
                                "first when the record would not fit).",
                            },
                        },
                        "additionalProperties": False,
                    },
                    "payload": {"$ref": f"./{ARTICLE_SCHEMA_FILE}"},
                    "bindings": {
                        "kafka": {
                            "key": {
                                "type": "string",
                                "pattern": "^[0-9]{1,18}$",
                                "description": "The article's FN as text, so that one article's "
                                "events stay in one partition.",
                            },
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    },
                },
                "recordRedriven": {
                    "name": "recordRedriven",
                    "title": "Record redriven",
                    "summary": f"A redrive marker, type {REDRIVE_MARKER_TYPE}: not a dead letter.",
                    "description": (
                        "Written by marker-ingest redrive on the dead-letter topic, in the partition of "
                        "the dead letter it marks, once that dead letter's input was published to "
                        "target_topic (in one transaction with it under INGEST_DELIVERY=exactly-once; "
                        "after its acknowledgement otherwise). A later redrive skips a dead letter so "
                        f"marked. Readers of the topic tell it by its {REDRIVEN_HEADER} header (a dead "
                        f"letter never has one, and always has {ERROR_CODE_HEADER}). Schema: "
                        f"{REDRIVE_MARKER_SCHEMA} (JSON Schema draft 2020-12)."
                    ),
                    "contentType": "application/json",
                    "headers": {
                        "type": "object",
                        "required": [REDRIVEN_HEADER],
                        "properties": {
                            REDRIVEN_HEADER: {
                                "type": "string",
                                "pattern": "^[0-9]+:[0-9]+$",
                                "description": "<partition>:<offset> of the dead letter it marks.",
                            }
                        },
                        "additionalProperties": False,
                    },
                    "payload": {"$ref": f"./{REDRIVE_MARKER_SCHEMA_FILE}"},
                    "bindings": {
                        "kafka": {
                            "key": {
                                "type": "string",
                                "pattern": "^[0-9]+:[0-9]+$",
                                "description": "<partition>:<offset> of the dead letter it marks.",
                            },
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    },
                },
                "recordDeadLettered": {
                    "name": "recordDeadLettered",
                    "title": "Record dead-lettered",
                    "summary": f"Why a record or a payload failed, type {DEAD_LETTER_EVENT_TYPE}.",
                    "description": (
                        "error.code is a stable public code (listed with its meaning in the schema); "
                        "raw holds the failing input so that it can be fixed and redriven. Not a "
                        "CloudEvent: plain JSON, with no content-type header (the headers are the "
                        "input's, but for content-type, ce_* and marker-ingest-*, which could make it "
                        "pass for a CloudEvent or forge the service's own). The whole record (key, "
                        "headers, value) is at most "
                        "INGEST_MAX_EVENT_BYTES: the raw copy is cut first; input headers, then the "
                        f"key, are left out only when the event does not fit otherwise. Schema: "
                        f"{DEAD_LETTER_SCHEMA} (JSON Schema draft 2020-12)."
                    ),
                    "contentType": "application/json",
                    "headers": {
                        "type": "object",
                        "required": [ERROR_CODE_HEADER],
                        "properties": {
                            ERROR_CODE_HEADER: {
                                "type": "string",
                                "enum": [code.value for code in ErrorCode],
                                "description": "error.code, to route or count without parsing the payload.",
                            },
                            DROPPED_HEADER: {
                                "type": "string",
                                "enum": ["key", "headers", "key,headers"],
                                "description": "Present when the input's key or headers were too large "
                                "to copy within INGEST_MAX_EVENT_BYTES (redrive then skips it as truncated).",
                            },
                            REDRIVE_COUNT_HEADER: {
                                "type": "string",
                                "pattern": "^[0-9]{1,9}$",
                                "description": "The input's last redrive count, when it had a well-formed "
                                "one; redrive stops at --max-redrives.",
                            },
                            ORIGIN_TRACEPARENT_HEADER: {
                                "type": "string",
                                "pattern": TRACEPARENT_PATTERN,
                                "description": "The trace the record started: what its article's "
                                "CloudEvents traceparent attribute would have been (the input's "
                                "traceparent, a redriven record's original one, or with tracing on the "
                                "service's process span); absent when there was none. redrive copies it.",
                            },
                        },
                        "additionalProperties": {
                            "description": "The input message's other headers, copied (not content-type, "
                            "ce_* or any other marker-ingest-* header), then a trace context: tracing "
                            "on, the service's send span's traceparent (with the input's tracestate); "
                            "tracing off, the input's traceparent and tracestate when valid (an invalid "
                            "one is not copied)."
                        },
                    },
                    "payload": {"$ref": f"./{DEAD_LETTER_SCHEMA_FILE}"},
                    "bindings": {
                        "kafka": {
                            "key": {
                                "type": ["string", "null"],
                                "description": "The input message's key, unchanged (null if it had none, "
                                "or if it was dropped: see marker-ingest-dropped).",
                            },
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    },
                },
            }
        },
    }
