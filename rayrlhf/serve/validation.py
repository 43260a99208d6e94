"""Check a scoring request body before it reaches a model (pure; no Ray, no torch).

Every rejection is a :class:`RequestError` carrying the HTTP status the client should see and
a message that names the offending item and field, so a client fixing item 3 of 40 does not
have to guess. Statuses follow HTTP's meaning: 400 the body is not a JSON object, 422 it is
JSON but not a valid request, 413 it is valid but larger than this service accepts.
"""

from __future__ import annotations

import json
from typing import Any

SCORE_FIELDS = ("prompt", "response")


class RequestError(Exception):
    """A client error: ``status`` is the 4xx HTTP status, ``message`` says what to fix."""

    def __init__(self, status: int, message: str):
        if not 400 <= status < 500:
            raise ValueError(f"RequestError is for 4xx statuses, got {status}")
        super().__init__(message)
        self.status = status
        self.message = message


def decode_json(body: bytes) -> Any:
    """The parsed body, or a 400 that says where parsing stopped."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"malformed JSON at line {err.lineno} column {err.colno} "
                                f"(char {err.pos}): {err.msg}") from None
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not UTF-8 text (byte {err.start})") from None


def check_text(item: dict, field: str, where: str, max_chars: int) -> str:
    """One required text field: present, a string, not blank, at most ``max_chars`` long."""
    name = f"{where}.{field}" if where else field
    if field not in item or item[field] is None:
        raise RequestError(422, f"{name} is missing")
    value = item[field]
    if not isinstance(value, str):
        raise RequestError(422, f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RequestError(422, f"{name} is blank")
    if len(value) > max_chars:
        raise RequestError(413, f"{name} has {len(value)} characters; this service accepts at "
                                f"most {max_chars}")
    return value


def check_item(item: Any, where: str, max_chars: int) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise RequestError(422, f"{where or 'the request'} must be an object with 'prompt' and "
                                f"'response', got {type(item).__name__}")
    prompt, response = (check_text(item, field, where, max_chars) for field in SCORE_FIELDS)
    return prompt, response


def parse_score_request(body: bytes, *, max_items: int, max_chars: int) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs from ``{"items": [{...}, ...]}`` or a single ``{...}``.

    Unknown extra keys are ignored (clients may send ids along); mixing ``items`` with a
    top-level prompt/response is rejected because it is unclear which one was meant.
    """
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(payload).__name__}; "
                                'send {"items": [{"prompt": ..., "response": ...}]}')
    if "items" not in payload:
        return [check_item(payload, "", max_chars)]
    if any(field in payload for field in SCORE_FIELDS):
        raise RequestError(422, "send either 'items' or a single 'prompt'/'response', not both")
    items = payload["items"]
    if not isinstance(items, list):
        raise RequestError(422, f"items must be a list of objects, got {type(items).__name__}")
    if not items:
        raise RequestError(422, "items is empty; send at least one {prompt, response} object")
    if len(items) > max_items:
        raise RequestError(413, f"{len(items)} items in one request; this service accepts at most "
                                f"{max_items} (split the request)")
    return [check_item(item, f"items[{i}]", max_chars) for i, item in enumerate(items)]


def max_body_bytes(max_items: int, max_chars: int) -> int:
    """The largest body a valid request can have, to refuse bigger ones before reading them.

    One character takes at most 12 bytes of JSON (a non-BMP character escaped as the pair
    ``\\ud83d\\ude00``); each item also gets room for keys, ids and whitespace.
    """
    per_item = 2 * 12 * max_chars + 1024
    return 4096 + max_items * per_item
