"""The result-notice stream in Valkey: how result servers learn that deliveries of an order can move on.

A mining server adds a notice when it stored a result (job key, order id, n, outcome). Dispatch and
the order sync add one when repetitions of an order became final without a result (refunded) or the
order ended (order id, outcome). Every result server reads every notice (they are tiny) and wakes
the deliveries of that order; a lost notice costs only delay, as deliveries also poll.
"""

from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from core.protocol import KEY_PREFIX

NOTICES_STREAM = f"{KEY_PREFIX}:results"
NOTICES_MAXLEN = 100_000  # approximate: the stream is trimmed as notices are added


class ResultNotice(BaseModel):
    key: str | None = None  # the job key, when one result was stored
    order_id: str
    n: int | None = None
    outcome: str  # paid, refunded, failed (a result); refunded, completed, cancelled (the order)

    def encode(self) -> dict[str, str]:
        """The fields of the notice's stream entry (those that are set)."""
        return {name: str(value) for name, value in self.model_dump(exclude_none=True).items()}

    @classmethod
    def decode(cls, fields: Mapping[bytes | str, bytes | str]) -> "ResultNotice | None":
        """The notice of a stream entry, or None if the entry is not one."""
        try:
            return cls.model_validate({_text(k): _text(v) for k, v in fields.items()})
        except (ValidationError, UnicodeDecodeError):
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
