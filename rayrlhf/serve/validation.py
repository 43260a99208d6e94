"""Check a scoring request body before it reaches a model (pure; no Ray, no torch).

Every rejection is a :class:`RequestError` carrying the HTTP status the client should see and
a message that names the offending item and field, so a client fixing item 3 of 40 does not
have to guess. Statuses follow HTTP's meaning: 400 the body cannot be parsed as a JSON object
(malformed, not UTF-8, nested too deep, an integer too long to convert), 422 it is JSON but
not a valid request (including text that cannot be encoded, and text holding a judge's
control-token strings such as ``<|im_end|>``, which could forge the end of a conversation),
413 it is valid but larger than this service accepts. The body's size is counted while it
is read, so a chunked body without Content-Length cannot make the service read it whole.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Sequence
from typing import Any

from rayrlhf.data.templates import find_control_tokens

SCORE_FIELDS = ("prompt", "response")


class RequestError(Exception):
    """A client error: ``status`` is the 4xx HTTP status, ``message`` says what to fix."""

    def __init__(self, status: int, message: str):
        if not 400 <= status < 500:
            raise ValueError(f"RequestError is for 4xx statuses, got {status}")
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(chunks: AsyncIterable[bytes], limit: int, declared: str | None = None) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes: before
    reading when its declared Content-Length says so, and otherwise (a chunked body, or a
    Content-Length that lies) at the chunk that crosses the limit."""
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared)} bytes is larger than the {limit} bytes "
                                "this service accepts")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is larger than the {limit} bytes this service accepts "
                                    f"(stopped reading at {size})")
        parts.append(chunk)
    return b"".join(parts)


def decode_json(body: bytes) -> Any:
    """The parsed body, or a 400 that says why parsing stopped."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"malformed JSON at line {err.lineno} column {err.colno} "
                                f"(char {err.pos}): {err.msg}") from None
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not UTF-8 text (byte {err.start})") from None
    except RecursionError:
        raise RequestError(400, "request body is nested too deeply to parse") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise RequestError(400, f"request body cannot be parsed: {str(err)[:200]}") from None


def check_text(item: dict, field: str, where: str, max_chars: int, control_tokens: Sequence[str] = ()) -> str:
    """One required text field: present, a string, not blank, at most ``max_chars`` long,
    encodable as UTF-8 and free of the judges' control-token strings."""
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
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(422, f"{name} is not valid Unicode text: a lone surrogate at character "
                                f"{err.start}") from None
    found = find_control_tokens(value, list(control_tokens))
    if found:
        raise RequestError(422, f"{name} contains the control token {found[0].group()!r} at character "
                                f"{found[0].start()}; text may not carry a judge's control tokens (they "
                                "could end the conversation early)")
    return value


def check_item(item: Any, where: str, max_chars: int, control_tokens: Sequence[str] = ()) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise RequestError(422, f"{where or 'the request'} must be an object with 'prompt' and "
                                f"'response', got {type(item).__name__}")
    prompt, response = (check_text(item, field, where, max_chars, control_tokens) for field in SCORE_FIELDS)
    return prompt, response


def parse_score_request(body: bytes, *, max_items: int, max_chars: int,
                        control_tokens: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs from ``{"items": [{...}, ...]}`` or a single ``{...}``.

    Unknown extra keys are ignored (clients may send ids along); mixing ``items`` with a
    top-level prompt/response is rejected because it is unclear which one was meant.
    ``control_tokens``: strings no text may contain (the loaded judges' special tokens).
    """
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(payload).__name__}; "
                                'send {"items": [{"prompt": ..., "response": ...}]}')
    if "items" not in payload:
        return [check_item(payload, "", max_chars, control_tokens)]
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
    return [check_item(item, f"items[{i}]", max_chars, control_tokens) for i, item in enumerate(items)]


def max_body_bytes(max_items: int, max_chars: int) -> int:
    """The largest body a valid request can have, to refuse bigger ones before reading them.

    One character takes at most 12 bytes of JSON (a non-BMP character escaped as the pair
    ``\\ud83d\\ude00``); each item also gets room for keys, ids and whitespace.
    """
    per_item = 2 * 12 * max_chars + 1024
    return 4096 + max_items * per_item
