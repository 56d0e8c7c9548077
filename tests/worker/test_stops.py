from rbee.dataplane.worker.stops import StopBuffer


def feed_all(buffer: StopBuffer, pieces: list[str]) -> str:
    out = "".join(buffer.feed(p) for p in pieces)
    return out + buffer.flush()


def test_no_stops_passes_text_through() -> None:
    buffer = StopBuffer(())
    assert buffer.feed("hello") == "hello"
    assert not buffer.stopped


def test_stop_inside_one_piece_cuts_there() -> None:
    buffer = StopBuffer(("END",))
    assert feed_all(buffer, ["abcENDdef"]) == "abc"
    assert buffer.stopped


def test_stop_split_across_pieces_is_held_then_dropped() -> None:
    buffer = StopBuffer(("\n\n",))
    assert buffer.feed("one\n") == "one"
    assert buffer.feed("\ntwo") == ""
    assert buffer.stopped


def test_partial_match_that_fails_is_released() -> None:
    buffer = StopBuffer(("STOP",))
    assert buffer.feed("ST") == ""
    assert buffer.feed("ART") == "START"
    assert not buffer.stopped


def test_flush_returns_held_text_when_stream_ends_otherwise() -> None:
    buffer = StopBuffer(("STOP",))
    assert buffer.feed("abcST") == "abc"
    assert buffer.flush() == "ST"


def test_earliest_of_several_stops_wins() -> None:
    buffer = StopBuffer(("c", "b"))
    assert feed_all(buffer, ["abc"]) == "a"
