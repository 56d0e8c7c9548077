"""Structured output: response_format and forced tool calls, through the unchanged `openai`
SDK against real workers, and the schema checks on their own.

The tiny model writes word pieces, almost never a closing quote, so its schemas bound every
string (maxLength or enum): the grammar then closes them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema_rs  # comes with schemathesis (test extras)
import openai
import pytest

from conftest import WorkerProcess, start_worker
from support.engine import running_engine, texts_together
from support.tinymodel import DEFAULT_CHAT_TEMPLATE, write_tiny_gguf

from rbee.dataplane.protocol.requests import ChatCompletionRequest
from rbee.dataplane.protocol.wire import ApiError
from rbee.dataplane.worker.engine import SamplingParams
from rbee.dataplane.worker.structured import TemplateCalls, constraint_for, schema_grammar

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "member": {"type": "boolean"},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
    },
    "required": ["name", "age", "member", "colour", "tags"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"$ref": "#/$defs/zone"}},
            "required": ["zone"],
            "$defs": {"zone": {"enum": ["utc", "local"]}},
        },
    },
}
HELLO = [{"role": "user", "content": "hello"}]


def sdk(worker: WorkerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{worker.url}/v1", api_key=worker.api_key or "unused", max_retries=0
    )


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


# ------------------------------------------------------------------ against a real worker


def test_json_schema_answers_validate_for_ten_seeds(shared_worker: WorkerProcess) -> None:
    client = sdk(shared_worker)
    for seed in range(10):
        answer = client.chat.completions.create(
            model=shared_worker.model_id,
            messages=HELLO,
            max_tokens=200,
            seed=seed,
            response_format=json_schema_format(PERSON),  # type: ignore[arg-type]
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema_rs.validate(PERSON, json.loads(choice.message.content or ""))


def test_json_schema_streams_text_that_parses(shared_worker: WorkerProcess) -> None:
    chunks = sdk(shared_worker).chat.completions.create(
        model=shared_worker.model_id,
        messages=HELLO,
        max_tokens=200,
        stream=True,
        response_format=json_schema_format(PERSON),  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    jsonschema_rs.validate(PERSON, json.loads(text))


def test_a_required_tool_call_names_a_tool_and_its_arguments_validate(
    shared_worker: WorkerProcess,
) -> None:
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
    for seed in range(3):
        answer = sdk(shared_worker).chat.completions.create(
            model=shared_worker.model_id,
            messages=HELLO,
            max_tokens=200,
            seed=seed,
            tools=[WEATHER, CLOCK],  # type: ignore[list-item]
            tool_choice="required",
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema_rs.validate(tools[call.function.name], json.loads(call.function.arguments))


def test_a_named_tool_is_called_and_streamed_as_tool_call_deltas(
    shared_worker: WorkerProcess,
) -> None:
    chunks = list(
        sdk(shared_worker).chat.completions.create(
            model=shared_worker.model_id,
            messages=HELLO,
            max_tokens=200,
            stream=True,
            tools=[WEATHER, CLOCK],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].type == "function"
    assert deltas[0].function and deltas[0].function.name == "get_time"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments)["zone"] in ("utc", "local")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_answers_text(shared_worker: WorkerProcess) -> None:
    answer = sdk(shared_worker).chat.completions.create(
        model=shared_worker.model_id,
        messages=HELLO,
        max_tokens=5,
        tools=[WEATHER],
        tool_choice="none",
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def test_a_chat_with_tool_calls_and_tool_results_renders(shared_worker: WorkerProcess) -> None:
    history = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    answer = sdk(shared_worker).chat.completions.create(
        model=shared_worker.model_id,
        messages=history,  # type: ignore[arg-type]
        max_tokens=4,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
    )
    # the template without tool support got the call as the JSON the model would write
    assert answer.usage and answer.usage.prompt_tokens > 20


def test_json_object_on_completions_parses(shared_worker: WorkerProcess) -> None:
    # The tiny model rarely closes a string: json_object may not finish in max_tokens, but
    # whatever it wrote is a prefix of JSON; a finished answer parses.
    answer = sdk(shared_worker).completions.create(
        model=shared_worker.model_id,
        prompt="{",
        max_tokens=60,
        seed=1,
        extra_body={"response_format": {"type": "json_object"}},
    )
    text = answer.choices[0].text
    assert text.lstrip().startswith("{")
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (
            {"response_format": json_schema_format({"type": "integer", "minimum": 1})},
            "response_format.json_schema.schema",
            "minimum",
        ),
        (
            {"response_format": {"type": "xml"}},
            "response_format",
            "json_schema",
        ),
        ({"tools": [WEATHER]}, "tool_choice", "required"),
        ({"functions": [WEATHER["function"]]}, "functions", "send tools instead"),
        ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "required"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
            "get_weather",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "response_format",
            "tool call",
        ),
        # Written out in full, this repeat was a 12 GB grammar: the worker ran out of memory.
        (
            {"response_format": json_schema_format({"type": "string", "pattern": "^a{99999999}$"})},
            "response_format.json_schema.schema",
            "repeats up to 1000",
        ),
        # No token starts with a NUL byte: the request died at its first token, a 500.
        (
            {"response_format": json_schema_format({"const": "\u0000"})},
            "response_format.json_schema.schema",
            "NUL",
        ),
    ],
)
def test_requests_that_cannot_be_honoured_get_a_400_naming_the_field(
    shared_worker: WorkerProcess, body: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(shared_worker).chat.completions.create(
            model=shared_worker.model_id, messages=HELLO, max_tokens=4, extra_body=body
        )
    error = info.value.body  # the SDK keeps the body's "error" object
    assert isinstance(error, dict)
    assert error["details"]["field"] == field
    assert says in error["message"]


def test_tool_call_arguments_nested_past_pythons_stack_are_text_not_a_500(
    shared_worker: WorkerProcess,
) -> None:
    """A history's call arguments that json cannot read (nested past Python's recursion
    limit) reach the template as the text they are."""
    call = {"id": "call_1", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": "[" * 3000}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answer = sdk(shared_worker).chat.completions.create(
        model=shared_worker.model_id,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=2,
    )
    assert answer.choices[0].finish_reason in ("length", "stop")


@pytest.mark.bundled
@pytest.mark.timeout(900)  # ~15 s on an idle machine; minutes when other work shares the CPU
def test_bundled_model_answers_json_schema_for_ten_seeds(spawn_worker) -> None:
    """The base model has no chat template: /v1/completions with response_format."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer"},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    worker = spawn_worker("pkg:gemma3-270m", "--ctx-size", "512")
    client = sdk(worker)
    for seed in range(10):
        answer = client.completions.create(
            model=worker.model_id,
            prompt="A person as JSON with name and age:\n",
            max_tokens=60,
            seed=seed,
            extra_body={"response_format": json_schema_format(schema)},
        )
        assert answer.choices[0].finish_reason == "stop"
        jsonschema_rs.validate(schema, json.loads(answer.choices[0].text))
    # json_object: any object, so the prompt shows short ones (a base model continues it)
    answer = client.completions.create(
        model=worker.model_id,
        prompt='{"name": "Ada", "age": 36}\n{"name": "Bob", "age": 41}\n',
        max_tokens=60,
        temperature=0,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].text), dict)


# ------------------------------------------------------------------ one batch, two samplers


def test_constrained_and_free_requests_in_one_batch_each_get_what_they_would_alone(
    tiny_model: Path,
) -> None:
    grammar = schema_grammar(PERSON, "schema")
    constrained = SamplingParams(max_tokens=200, temperature=0.9, seed=7, grammar=grammar)
    free = SamplingParams(max_tokens=40, temperature=0.9, seed=8)

    async def main() -> None:
        async with running_engine(tiny_model, slots=2, ctx_size=512) as engine:
            [(json_alone, _)] = await texts_together(engine, "hello", [constrained])
            [(free_alone, _)] = await texts_together(engine, "hello", [free])
            together = [t for t, _ in await texts_together(engine, "hello", [constrained, free])]
        jsonschema_rs.validate(PERSON, json.loads(json_alone))
        assert together == [json_alone, free_alone]
        assert not free_alone.lstrip().startswith("{")

    asyncio.run(main())


def test_concurrent_constrained_and_free_requests_through_the_sdk(
    shared_worker: WorkerProcess,
) -> None:
    client = sdk(shared_worker)

    def constrained(seed: int) -> str:
        answer = client.chat.completions.create(
            model=shared_worker.model_id,
            messages=HELLO,
            max_tokens=200,
            seed=seed,
            response_format=json_schema_format(PERSON),  # type: ignore[arg-type]
        )
        return answer.choices[0].message.content or ""

    def free(seed: int) -> str:
        answer = client.chat.completions.create(
            model=shared_worker.model_id, messages=HELLO, max_tokens=30, seed=seed
        )
        return answer.choices[0].message.content or ""

    with ThreadPoolExecutor(2) as pool:
        json_text = pool.submit(constrained, 3)
        free_text = pool.submit(free, 4)
    jsonschema_rs.validate(PERSON, json.loads(json_text.result()))
    assert free_text.result() == free(4)


# ------------------------------------------------------------------ schema checks


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": HELLO} | fields)


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "integer", "maximum": 3}, "maximum"),
        ({"type": "object", "properties": {"a": {"not": {}}}}, "not at properties.a"),
        ({"type": "object", "required": ["a"]}, "required names a"),
        ({"type": "date"}, "'date' is not a JSON schema type"),
        ({"$ref": "https://example.com/s.json"}, "only local references"),
        ({"type": "string", "pattern": "abc"}, "cannot become a grammar"),
        # llama.cpp's parser recurses into each nested group: a bound, not a crash
        ({"type": "string", "maxLength": 30000}, "maxLength 30000: rbee takes whole numbers"),
        ({"type": "string", "pattern": "^a{0,30000}$"}, "repeats up to 1000"),
    ],
)
def test_schemas_the_grammar_cannot_enforce_are_refused(schema: dict[str, Any], says: str) -> None:
    with pytest.raises(ApiError) as info:
        constraint_for(chat(response_format=json_schema_format(schema)))
    assert info.value.details["field"] == "response_format.json_schema.schema"
    assert says in info.value.message


def test_text_format_and_no_tools_mean_no_grammar() -> None:
    assert constraint_for(chat(response_format={"type": "text"})) is None
    assert constraint_for(chat(tools=[WEATHER], tool_choice="none")) is None


def test_tool_parameters_keep_their_own_definitions() -> None:
    # both tools' $defs and refs move under a prefix of their own and still resolve
    constraint = constraint_for(chat(tools=[CLOCK, CLOCK | {}], tool_choice="required"))
    assert constraint is not None and constraint.tool_call
    assert '"\\"utc\\""' in constraint.grammar


# ------------------------------------------------------------------ tool_choice "auto"

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\ntools:{% for t in tools %} {{ t.function.name }}"
    "{% endfor %}<|im_end|>\n{% endif %}" + DEFAULT_CHAT_TEMPLATE
)


@pytest.fixture(scope="module")
def tools_worker(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker whose chat template renders tools."""
    model = write_tiny_gguf(models_dir / "tiny-tools.gguf", chat_template=TOOLS_TEMPLATE)
    worker = start_worker(model, tmp_path_factory.mktemp("tools-worker"))
    yield worker
    worker.stop()


def test_auto_renders_the_tools_through_a_template_that_knows_them(
    tools_worker: WorkerProcess,
) -> None:
    client = sdk(tools_worker)
    plain = client.chat.completions.create(
        model=tools_worker.model_id, messages=HELLO, max_tokens=4
    )
    auto = client.chat.completions.create(
        model=tools_worker.model_id,
        messages=HELLO,
        max_tokens=4,
        tools=[WEATHER, CLOCK],  # type: ignore[list-item]
    )
    assert plain.usage and auto.usage
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools reached the prompt
    # the tiny model writes words, never a call: the answer is text
    assert auto.choices[0].message.content and not auto.choices[0].message.tool_calls
    streamed = client.chat.completions.create(
        model=tools_worker.model_id,
        messages=HELLO,
        max_tokens=4,
        stream=True,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed)


def read_calls(pieces: list[str], *, parallel: bool = True) -> tuple[str, str, list[Any]]:
    """(content streamed early, content at the end, calls) of an answer fed in pieces."""
    reader = TemplateCalls(["get_weather", "get_time"], parallel=parallel)
    early = "".join(reader.feed(p) for p in pieces)
    tail, calls = reader.finish()
    return (
        early,
        tail,
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls],
    )


def test_template_calls_are_read_in_the_formats_templates_teach() -> None:
    hermes = [
        "Let me look.",
        " <tool",
        '_call>\n{"name": "get_weather", "arguments": ',
        '{"city": "Oslo"}}\n</tool_call>',
    ]
    assert read_calls(hermes) == ("Let me look. ", "", [("get_weather", {"city": "Oslo"})])
    two = ['<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'] * 2
    assert read_calls(two)[2] == [("get_time", {})] * 2
    assert read_calls(two, parallel=False)[2] == [("get_time", {})]
    llama = ['\n{"name": "get_time", ', '"parameters": {"zone": "utc"}}']
    assert read_calls(llama) == ("", "", [("get_time", {"zone": "utc"})])
    mistral = ['[{"name": "get_time", "arguments": {"zone": "local"}}]']
    assert read_calls(mistral)[2] == [("get_time", {"zone": "local"})]
    # text streams as it comes; JSON that is no call of these tools is text too
    assert read_calls(["It is", " sunny."]) == ("It is sunny.", "", [])
    assert read_calls(['{"name": "rm", "arguments": {}}']) == (
        "",
        '{"name": "rm", "arguments": {}}',
        [],
    )
