"""The body the queen sends a worker: the client's, naming the worker's model."""

from __future__ import annotations

import json

import pytest

from rbee.control.queen.forwarding import with_model


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "gemma", "prompt": "a \\"model\\": x}"}',
        b' {"prompt": "hi", "model": "gemma"}\r\n',
        '{"model": "gemma", "prompt": "é"}'.encode("utf-16-le"),
        '{"model": "gemma", "prompt": "é"}'.encode("utf-16-be"),
        '{"model": "gemma", "prompt": "é"}'.encode("utf-8-sig"),
    ],
)
def test_the_body_names_the_model_and_keeps_the_rest(body: bytes) -> None:
    sent = json.loads(with_model(body, 'file:/models/"odd".gguf'))
    assert sent["model"] == 'file:/models/"odd".gguf'
    assert sent["prompt"] == json.loads(body)["prompt"]
