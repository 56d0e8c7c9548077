"""Request bodies of the worker's APIs, validated field by field (pydantic)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .limits import MAX_TOKENS_LIMIT

DEFAULT_MAX_TOKENS = 256  # native API default when the client gives none
OPENAI_DEFAULT_MAX_TOKENS = 16  # /v1/completions default, as OpenAI's API

MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
# OpenAI's presence and frequency penalties; llama.cpp's repetition penalty (1.0: off) and how
# many of the latest tokens, prompt included, it looks at.
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
RepeatPenalty = Annotated[float, Field(ge=0.1, le=2.0)]
RepeatLastN = Annotated[int, Field(ge=0, le=MAX_TOKENS_LIMIT)]
# The native API's (and so `rbee infer`'s) repetition defaults: the bundled model loops
# without them (docs/performance.md, "Repetition", has the measurements behind the choice).
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_REPEAT_LAST_N = 256


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
    repeat_penalty: RepeatPenalty = DEFAULT_REPEAT_PENALTY
    repeat_last_n: RepeatLastN = DEFAULT_REPEAT_LAST_N
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
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


# Structured output (docs/structured-output.md): the answer constrained by a grammar.
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
JsonSchema = dict[str, Any]


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: FunctionName
    description: str | None = None
    # `schema` would shadow a BaseModel attribute, hence the alias.
    json_schema: JsonSchema = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: FunctionName
    description: str | None = None
    parameters: JsonSchema | None = None  # none: a function without arguments
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


# logit_bias: token ids (as strings, JSON keys) to a bias added to their logits.
LogitBias = dict[
    Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100.0, le=100.0)]
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    # OpenAI pads chunks against a side channel of its own network; ignored by design.
    include_obfuscation: bool | None = None


class OpenAIRequest(BaseModel):
    """Fields shared by the OpenAI-compatible endpoints. Every OpenAI field either works, is
    ignored by design (metadata) or is refused naming it, and so is an unknown field, as
    OpenAI's own API does (docs/openai.md has the table)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="the model's id (GET /v1/models) or its file; any other is a 404"
    )
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = 0  # an extension, as in llama.cpp's server
    seed: Seed | None = None
    stop: StopList | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1)] = 1
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    # llama.cpp's repetition penalty, an extension (as llama.cpp's server and Ollama take
    # it); off by default here, as OpenAI's own defaults have no penalty.
    repeat_penalty: RepeatPenalty = 1.0
    repeat_last_n: RepeatLastN = DEFAULT_REPEAT_LAST_N
    logit_bias: LogitBias | None = None
    user: str | None = None  # the caller's end-user id, for OpenAI's abuse monitoring: metadata

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n > 1:
            raise ValueError("one choice per request is supported; send the request n times")
        return n

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, options: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if options is not None and not info.data.get("stream"):
            raise ValueError("only allowed with stream: true")
        return options

    response_format: ResponseFormat | None = None

    def token_limit(self, default: int | None) -> int | None:
        return self.max_completion_tokens or self.max_tokens or default

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items())


class RoutedRequest(BaseModel):
    """What the queen reads of an OpenAI request to route it; the worker that takes it
    validates the rest (the queen passes the body on as it came)."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, description="a model GET /v1/models lists")]
    stream: bool = False


def _one_prompt(value: Any) -> str | list[int]:
    """OpenAI's prompt shapes (a string, token ids, or a list of either) as the one prompt a
    request may carry: its text or its token ids. What does not fit is said in plain words
    (pydantic's own errors on a union name its members: `prompt.constrained-str`...)."""
    if isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        if len(value) > 1:
            raise PydanticCustomError(
                "one_prompt",
                "{count} prompts in one request: this server answers one prompt per "
                "request; send each in a request of its own (a worker with several slots "
                "runs them at once)",
                {"count": len(value)},
            )
        value = value[0]  # a list holding one prompt
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("prompt_empty", "the prompt is empty")
        return value
    if isinstance(value, list):
        if not value:
            raise PydanticCustomError(
                "prompt_empty", "the list is empty: send the prompt as a string or token ids"
            )
        if all(type(t) is int and t >= 0 for t in value):
            return value
    raise PydanticCustomError(
        "prompt_shape",
        "give the prompt as a string, a list of token ids (integers ≥ 0), or a list "
        "holding one of those",
    )


class CompletionRequest(OpenAIRequest):
    prompt: Annotated[
        str | list[int],
        BeforeValidator(
            _one_prompt, json_schema_input_type=str | list[str] | list[int] | list[list[int]]
        ),
        Field(description="one prompt: text or token ids, alone or as a list's one item"),
    ]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None  # OpenAI's limit
    echo: bool = False  # before the answer, the prompt as sent
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, best_of: int | None) -> int | None:
        if best_of is not None and best_of > 1:
            raise ValueError("one candidate per request is supported (best_of 1)")
        return best_of

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix: str | None) -> str | None:
        if suffix:
            raise ValueError("text after the insertion (fill in the middle) is not supported")
        return suffix

    @field_validator("echo")
    @classmethod
    def _echo_without_logprobs(cls, echo: bool, info: ValidationInfo) -> bool:
        if echo and info.data.get("logprobs") is not None:
            raise ValueError("with logprobs (scoring the prompt's tokens) is not supported")
        if echo and not isinstance(info.data.get("prompt", ""), str):
            raise ValueError("with a prompt of token ids is not supported; send it as text")
        return echo

    def limit(self) -> int:
        return self.token_limit(OPENAI_DEFAULT_MAX_TOKENS) or OPENAI_DEFAULT_MAX_TOKENS

    def logprob_count(self) -> int | None:
        return self.logprobs


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, earlier in the chat
    tool_call_id: str | None = None  # a tool message: which call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


# Chat fields refused when set, and why (docs/openai.md).
UNSUPPORTED_CHAT_FIELDS = {
    "audio": "audio output is not supported (text models only)",
    "reasoning_effort": "for reasoning models; this server runs no reasoning model",
    "verbosity": "for reasoning models; this server runs no reasoning model",
    "web_search_options": "web search is not supported",
}


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's deprecated forms of tools and tool_choice: refused with a pointer to those.
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    modalities: list[Literal["text"]] | None = None
    # Ignored by design: metadata of the request, and options of OpenAI's platform (storage,
    # tiers, its prompt cache) that do not change the answer; `prediction` only speeds up an
    # answer OpenAI would give anyway.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    prediction: dict[str, Any] | None = None
    # Refused when set: UNSUPPORTED_CHAT_FIELDS says why.
    audio: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None

    @field_validator(*UNSUPPORTED_CHAT_FIELDS)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError(f"not supported: {UNSUPPORTED_CHAT_FIELDS[info.field_name or '']}")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("only allowed with logprobs: true")
        return top

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None
