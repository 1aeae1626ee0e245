"""Opaque cursors for newest-first listings."""

import base64
import json
from datetime import datetime

from core.errors import InvalidInput
from core.storage import Cursor


def encode_cursor(created_at: datetime, key: str) -> str:
    raw = json.dumps([created_at.isoformat(), key]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Cursor | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, key = json.loads(raw)
        parsed = datetime.fromisoformat(when)
        if parsed.tzinfo is None or not isinstance(key, str):
            raise ValueError
        return parsed, key
    except (ValueError, TypeError):
        raise InvalidInput("invalid cursor: pass the next_cursor of the previous page") from None
