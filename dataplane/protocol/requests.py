"""Request bodies of the worker's APIs, validated field by field (pydantic)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_TOKENS_LIMIT = 8192  # DESIGN §4: max_tokens 1–8192
DEFAULT_MAX_TOKENS = 256  # native API default when the client gives none
OPENAI_DEFAULT_MAX_TOKENS = 16  # /v1/completions default, as OpenAI's API

MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# `stop` may be one string or a list of them, as in OpenAI's API.
StopList = Annotated[
    list[Annotated[str, Field(min_length=1)]], Field(max_length=16), BeforeValidator(_as_list)
]


class InferenceRequest(BaseModel):
    """POST /v1/inference (the native API): strict, unknown fields are errors."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # The schema says what the validator below holds: exactly one of the two, not null.
        json_schema_extra={
            "oneOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
            ]
        },
    )

    # One of the two: a prompt as it is, or chat messages the worker renders with its chat
    # template, as POST /v1/chat/completions does (`rbee infer --chat`).
    prompt: Annotated[str, Field(min_length=1)] | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS
    temperature: Temperature = 0.8
    top_p: TopP = 1.0
    top_k: TopK = 0
    seed: Seed | None = None
    stop: StopList = []
    stream: bool = True
    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")] | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> InferenceRequest:
        if (self.prompt is None) == (self.messages is None):
            # Raised as the field's own error, so that the answer names "prompt".
            error = PydanticCustomError(
                "prompt_or_messages", 'give either "prompt" or "messages" (chat), not both'
            )
            details = InitErrorDetails(type=error, loc=("prompt",), input=self.prompt)
            raise ValidationError.from_exception_data(type(self).__name__, [details])
        return self


class QueenInferenceRequest(InferenceRequest):
    """POST /v1/inference at the queen: the worker's body, plus the model to route it to
    (an inventory model's name or a model reference)."""

    model: Annotated[str, Field(min_length=1)]

    def for_worker(self, request_id: str) -> dict[str, object]:
        """The worker's body: everything but the model, with the request's id."""
        body = self.model_dump(mode="json", exclude={"model"}, exclude_none=True)
        return body | {"request_id": request_id}


class OpenAIRequest(BaseModel):
    """Fields shared by the OpenAI-compatible endpoints. Unknown fields are ignored, as
    OpenAI SDKs send options this server has no use for."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = 0  # an extension, as in llama.cpp's server
    seed: Seed | None = None
    stop: StopList | None = None
    stream: bool = False
    n: Annotated[int, Field(ge=1, le=1)] = 1

    def token_limit(self, default: int | None) -> int | None:
        return self.max_completion_tokens or self.max_tokens or default


class RoutedRequest(BaseModel):
    """What the queen reads of an OpenAI request to route it; the worker that takes it
    validates the rest (the queen passes the body on as it came)."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, description="a model GET /v1/models lists")]
    stream: bool = False


class CompletionRequest(OpenAIRequest):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=1)]
    )

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def limit(self) -> int:
        return self.token_limit(OPENAI_DEFAULT_MAX_TOKENS) or OPENAI_DEFAULT_MAX_TOKENS


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
