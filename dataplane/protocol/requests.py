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


class OpenAIRequest(BaseModel):
    """Fields shared by the OpenAI-compatible endpoints. Unknown fields are ignored, as
    OpenAI SDKs send options this server has no use for."""

    model_config = ConfigDict(extra="ignore")

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
    n: Annotated[int, Field(ge=1, le=1)] = 1
    response_format: ResponseFormat | None = None

    def token_limit(self, default: int | None) -> int | None:
        return self.max_completion_tokens or self.max_tokens or default


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
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, earlier in the chat
    tool_call_id: str | None = None  # a tool message: which call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's deprecated forms of tools and tool_choice: refused with a pointer to those.
    functions: list[Any] | None = None
    function_call: Any = None
