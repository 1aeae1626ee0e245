"""The job stream in Valkey: jobs the queue (`core.queue`) released, for mining servers to hand out.

An entry has two fields: `key`, the job key (to read the stream by eye), and `job`, the `Job` as JSON.
"""

from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel, Field, ValidationError

from core.protocol import KEY_PREFIX
from core.schemas import RequestSpec

JOBS_STREAM = f"{KEY_PREFIX}:jobs"
KEY_FIELD = "key"
JOB_FIELD = "job"


class JobKey(BaseModel):
    key: str = Field(description='"{order_id}:{n}"')


class _Repetition(JobKey):
    order_id: str
    n: int


class Job(RequestSpec, _Repetition):
    """One repetition to fetch, as it travels through the queue."""

    due_at: datetime


def encode(job: Job) -> dict[str, str]:
    """The fields of the job's stream entry."""
    return {KEY_FIELD: job.key, JOB_FIELD: job.model_dump_json()}


def decode(fields: Mapping[bytes | str, bytes | str] | None) -> Job | None:
    """The job of a stream entry, or None if the entry is unreadable (or was deleted)."""
    raw = (fields or {}).get(JOB_FIELD.encode()) or (fields or {}).get(JOB_FIELD)
    try:
        return Job.model_validate_json(raw) if raw else None
    except ValidationError:
        return None
