"""The job queue's messages as JSON, never pickle.

huey pickles its messages by default: whoever can write to the queue (anyone
reaching Redis, or the SQLite file) would run code in every worker. This
serializer writes only the two tasks this project enqueues, with their JSON
arguments (a job id, an item number); anything else — a pickle, another task,
another argument — is refused on load, never executed.
"""

from datetime import datetime
from typing import Annotated, Literal

from huey.registry import Message
from huey.serializer import Serializer
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

FORMAT = 1
# huey names a task "<module>.<name>": the tasks gateway/server/jobs/engine.py registers.
TASK_PREFIX = "gateway.server.jobs.engine."
ANALYZE_ITEM = TASK_PREFIX + "analyze_item"
SEND_WEBHOOK = TASK_PREFIX + "send_webhook"


class RefusedMessage(ValueError):
    """A queue message this gateway did not write: dropped, never run."""


class _Queued(BaseModel):
    """The fields of huey's Message that this project's tasks use; those it never sets
    (chords, callbacks, expiry, timeouts) must stay empty."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal[1]
    id: StrictStr = Field(max_length=64)
    eta: datetime | None  # a retry's due time (huey's naive UTC)
    retries: StrictInt = Field(ge=0, le=1000)
    retry_delay: StrictInt | float = Field(ge=0, le=86400)
    retry_backoff: StrictInt | float | None = Field(ge=0, le=100)
    priority: StrictInt | None


class _AnalyzeItem(_Queued):
    name: Literal["gateway.server.jobs.engine.analyze_item"]
    args: tuple[Annotated[str, Field(max_length=64)], Annotated[int, Field(ge=0)]]


class _SendWebhook(_Queued):
    name: Literal["gateway.server.jobs.engine.send_webhook"]
    args: tuple[Annotated[str, Field(max_length=64)]]


# The name picks the model; every field is checked before a worker sees the message.
QUEUED = TypeAdapter(Annotated[_AnalyzeItem | _SendWebhook, Field(discriminator="name")])


def why(exc: ValidationError) -> str:
    """The first problem, short: the message's content is never echoed (it may be huge)."""
    error = exc.errors(include_input=False)[0]
    return f"{'.'.join(map(str, error['loc'])) or 'message'}: {error['msg']}"


UNUSED = ("kwargs", "on_complete", "on_error", "expires", "expires_resolved", "timeout")


class JsonSerializer(Serializer):
    """huey's Serializer for Message only: JSON out, validated JSON in."""

    def __init__(self) -> None:
        super().__init__(compression=False)

    def _serialize(self, data: object) -> bytes:
        if not isinstance(data, Message):
            raise TypeError(f"the job queue carries task messages only, not {type(data)}")
        if data.chord_config is not None or any(getattr(data, f) for f in UNUSED):
            raise TypeError(f"{data.name}: only positional JSON arguments are queued")
        fields = {
            "format": FORMAT,
            "id": data.id,
            "name": data.name,
            "eta": data.eta,
            "retries": data.retries,
            "retry_delay": data.retry_delay,
            "retry_backoff": data.retry_backoff,
            "priority": data.priority,
            "args": tuple(data.args),
        }
        try:
            checked = QUEUED.validate_python(fields)  # what a load would refuse is never written
        except ValidationError as exc:
            raise TypeError(f"{data.name}: not a queueable message ({why(exc)})") from None
        return checked.model_dump_json().encode()

    def _deserialize(self, data: bytes) -> Message:
        try:
            message = QUEUED.validate_json(data)
        except ValidationError as exc:  # not JSON (a pickle…), or not one of our two tasks
            raise RefusedMessage(
                f"refused a job queue message that this gateway did not write ({why(exc)})"
            ) from None
        return Message(
            id=message.id,
            name=message.name,
            eta=message.eta,
            retries=message.retries,
            retry_delay=message.retry_delay,
            priority=message.priority,
            args=message.args,
            kwargs={},
            retry_backoff=message.retry_backoff,
        )
