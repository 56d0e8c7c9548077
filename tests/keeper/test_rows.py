"""Listings at the terminal's width (rows.py): nothing cut that a person copies, nothing
wrapped one word per line."""

from __future__ import annotations

from rich.text import Text

from rbee.control.keeper.rows import Column, Rows, wrapped

PROBLEM = (
    "Connection refused by 127.0.0.1:41093: is sshd running on the node and is the port "
    "in the inventory right?"
)
SUGGESTION = "it may be stopped or overloaded: `rbee ssh-down beta`, then `rbee ssh-up beta`"


def plain(lines: list[Text]) -> list[str]:
    return [line.plain for line in lines]


def test_a_row_fits_and_its_details_wrap_under_it_between_words() -> None:
    cells = ("beta", "127.0.0.1", "unreachable")
    rows = Rows([Column("node"), Column("host", shrinks=True), Column("hive")], 40, [cells])
    [line, *details] = plain(rows.row(cells, (PROBLEM, SUGGESTION)))
    assert line == "beta  127.0.0.1  unreachable"
    assert all(len(d) <= 40 for d in details)
    assert " ".join(d.strip() for d in details) == f"{PROBLEM} {SUGGESTION}"
    # A command is never broken across lines: it is copied whole.
    assert any(d.strip().startswith("`rbee ssh-down beta`") for d in details)
    assert "`rbee ssh-up beta`" in details[-1]


def test_columns_line_up_from_the_values_known_before_rows_arrive() -> None:
    rows = Rows(
        [Column("node"), Column("hive", width=16), Column("ram")],
        80,
        [("alpha",), ("a-long-name",)],
    )
    assert rows.header().plain == "node         hive              ram"
    assert plain(rows.row(("alpha", "up", "1.0 GB"))) == ["alpha        up                1.0 GB"]


def test_on_a_narrow_terminal_long_values_go_under_the_row_whole() -> None:
    url = "http://127.0.0.1:45678"
    model = "file:/tmp/pytest-of-root/pytest-12/test_workers0/models/tiny-model.gguf"
    columns = [
        Column("worker"),
        Column("model", below=True),
        Column("state"),
        Column("url", below=True),
    ]
    cells = ("worker-1a2b3c4d", model, "idle", url)
    wide = Rows(columns, 200, [cells])
    assert wide.moved == () and plain(wide.row(cells)) == [
        f"worker-1a2b3c4d  {model}  idle   {url}"
    ]
    narrow = Rows(columns, 60, [cells])
    assert narrow.moved == ("model",)  # the widest first, then only as many as needed
    assert plain(narrow.row(cells)) == [
        f"worker-1a2b3c4d  idle   {url}",
        f"  model: {model}",
    ]
    assert narrow.header().plain == "worker           state  url"


def test_a_shrinking_column_is_cut_last_and_the_line_never_passes_the_width() -> None:
    columns = [Column("node"), Column("host", shrinks=True), Column("state")]
    cells = ("gpu-box", "gpu-box.lab.internal.example.com", "not answering")
    [line] = plain(Rows(columns, 36, [cells]).row(cells))
    assert line.startswith("gpu-box  gpu-box.lab") and line.endswith("…  not answering")
    assert len(line) == 36
    [cropped] = plain(Rows([Column("a"), Column("b")], 10, [("x" * 8, "y" * 8)]).row(("x", "y")))
    assert len(cropped) <= 10


def test_a_word_longer_than_the_width_stays_whole() -> None:
    path = "/a/very/long/path/" + "x" * 60
    assert [line.plain.strip() for line in wrapped(f"cannot read {path}", 40)] == [
        "cannot read",
        path,
    ]
