"""Model references (dataplane/protocol/model_refs.py): every accepted form, and what is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rbee.dataplane.protocol.model_refs import (
    ACCEPTED_FORMS,
    InvalidModelRef,
    ModelRef,
    local_filename,
    parse_model_ref,
)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("pkg:gemma3-270m", ModelRef("pkg:gemma3-270m", "pkg", name="gemma3-270m")),
        (
            "file:/models/tiny.gguf",
            ModelRef("file:/models/tiny.gguf", "file", path=Path("/models/tiny.gguf")),
        ),
        (
            "file:/models/./sub//Tiny-Q8_0.GGUF",
            ModelRef(
                "file:/models/sub/Tiny-Q8_0.GGUF", "file", path=Path("/models/sub/Tiny-Q8_0.GGUF")
            ),
        ),
        (
            "https://example.com/m/tiny.gguf",
            ModelRef(
                "https://example.com/m/tiny.gguf", "https", url="https://example.com/m/tiny.gguf"
            ),
        ),
        (
            "HTTPS://Example.COM:443/m/a%20b.gguf",
            ModelRef(
                "https://example.com/m/a%20b.gguf", "https", url="https://example.com/m/a%20b.gguf"
            ),
        ),
        (
            "https://example.com:8443/m/tiny.gguf",
            ModelRef(
                "https://example.com:8443/m/tiny.gguf",
                "https",
                url="https://example.com:8443/m/tiny.gguf",
            ),
        ),
        (
            "http://127.0.0.1:8000/m/tiny.gguf",
            ModelRef(
                "http://127.0.0.1:8000/m/tiny.gguf",
                "https",
                url="http://127.0.0.1:8000/m/tiny.gguf",
            ),
        ),
        (
            "http://localhost/tiny.gguf",
            ModelRef("http://localhost/tiny.gguf", "https", url="http://localhost/tiny.gguf"),
        ),
        (
            "http://[::1]:9/tiny.gguf",
            ModelRef("http://[::1]:9/tiny.gguf", "https", url="http://[::1]:9/tiny.gguf"),
        ),
        (
            "hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
            ModelRef(
                "hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
                "hf",
                repo_id="TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
            ),
        ),
        (
            "hf:org/repo:sub/dir/model.Q4_K_M.gguf",
            ModelRef(
                "hf:org/repo:sub/dir/model.Q4_K_M.gguf",
                "hf",
                repo_id="org/repo",
                filename="sub/dir/model.Q4_K_M.gguf",
            ),
        ),
    ],
)
def test_accepted_forms_parse_into_their_parts(ref: str, expected: ModelRef) -> None:
    parsed = parse_model_ref(ref)
    assert parsed == expected
    assert parse_model_ref(parsed.ref) == parsed  # the canonical form is a fixed point


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("", "empty"),
        ("tiny.gguf", "no provider prefix"),
        ("/models/tiny.gguf", "no provider prefix"),
        ("ftp://example.com/tiny.gguf", "unknown provider 'ftp'"),
        ("s3:bucket/tiny.gguf", "unknown provider"),
        ("pkg:unknown", "unknown bundled model (known: pkg:gemma3-270m)"),
        ("pkg:", "unknown bundled model"),
        ("file:relative/x.gguf", "absolute path"),
        ("file://host/x.gguf", "absolute path"),
        ("file:/a/../etc/x.gguf", "'..'"),
        ("file:/a/..", "'..'"),
        ("file:/models/tiny.bin", ".gguf"),
        ("file:/models/.gguf", ".gguf"),
        ("http://example.com/tiny.gguf", "loopback hosts only"),
        ("http://10.0.0.1/tiny.gguf", "loopback hosts only"),
        ("https://example.com/tiny.bin", ".gguf file"),
        ("https://example.com/a/../tiny.gguf", "'..'"),
        ("https://user@example.com/tiny.gguf", "not a URL"),
        ("https://example.com/tiny.gguf#frag", "#sha256=<64 hex digits>"),
        ("https://example.com:99999/tiny.gguf", "out of range"),
        ("https:///tiny.gguf", "not a URL"),
        ("hf:../x", "hub names"),
        ("hf:org/..", "hub names"),
        ("hf:org/re..po", "hub names"),
        ("hf:org", "needs ORG/REPO"),
        ("hf:org/repo/extra", "hub names"),
        ("hf:-org/repo", "hub names"),
        ("hf:" + "a" * 97 + "/repo", "hub names"),
        ("hf:org/repo:../x.gguf", "relative path"),
        ("hf:org/repo:/abs/x.gguf", "relative path"),
        ("hf:org/repo:dir/./x.gguf", "relative path"),
        ("hf:org/repo:x.bin", "FILE must end in .gguf"),
        ("hf:org/repo:", "relative path"),
        ("hf:org/repo;rm -rf ~", "shell metacharacter ';'"),
        ("hf:org/repo rm", "control or space character ' '"),
        ("file:/m/$(id).gguf", "shell metacharacter '$'"),
        ("file:/m/`id`.gguf", "shell metacharacter '`'"),
        ("https://example.com/a|b.gguf", "shell metacharacter '|'"),
        ("https://example.com/x.gguf?download=1", "shell metacharacter '?'"),
        ("https://example.com/x.gguf&y", "shell metacharacter '&'"),
        ("pkg:gemma3-270m\n", "control or space character '\\n'"),
        ("file:/m/a\tb.gguf", "control or space character '\\t'"),
        ("file:/m/a\x00b.gguf", "control or space character '\\x00'"),
        ("file:/m/a\u202eb.gguf", "control or space character '\\u202e'"),
        ("file:/m/" + "a" * 3000 + ".gguf", "longer than 2048"),
    ],
)
def test_refused_references_say_why_and_list_the_accepted_forms(ref: str, reason: str) -> None:
    with pytest.raises(InvalidModelRef) as info:
        parse_model_ref(ref)
    message = str(info.value)
    assert reason in message
    assert all(form in message for form in ACCEPTED_FORMS)
    assert "\n" not in message and "\x00" not in message  # never raw into a log line
    assert isinstance(info.value, ValueError)


def test_local_filename_is_safe_stable_and_collision_free() -> None:
    names = {
        ref: local_filename(ref)
        for ref in (
            "https://a.example/m/model.gguf",
            "https://b.example/m/model.gguf",
            "hf:org/repo:model.gguf",
            "hf:org/repo",
            "hf:org/repo:sub/MyModel+v1.Q8_0.gguf",
            "http://127.0.0.1:8000/a%20b%2F..%2Fc.gguf",
            "file:/models/.hidden.gguf",
            "pkg:gemma3-270m",
        )
    }
    assert len(set(names.values())) == len(names)
    for name in names.values():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9a-f]{12}\.gguf", name), name
    assert names["hf:org/repo"].startswith("repo-")
    assert names["https://a.example/m/model.gguf"].startswith("model-")
    assert names["http://127.0.0.1:8000/a%20b%2F..%2Fc.gguf"].startswith("a_b_.._c-")
    # The same model spelt differently gets the same file.
    assert (
        local_filename("HTTPS://A.example:443/m/model.gguf")
        == names["https://a.example/m/model.gguf"]
    )
    assert local_filename(parse_model_ref("hf:org/repo")) == names["hf:org/repo"]
