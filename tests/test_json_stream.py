"""Streaming a JSON object member by member: the values json.loads gives, errors at the file's
line and column, and a window that holds one array element, not the document."""

import io
import json

import pytest

from dldc.data.json_stream import ArrayElements, DuplicateKeyError, NotAnObjectError, iter_members

DOCUMENTS = [
    {"images": []},
    {},
    {"dataset": "rsicd", "images": [{"filename": "a.jpg", "sentences": [{"raw": "a lake"}]}], "n": 12345},
    {"images": [1, 22, 333, 4444.5, -1e-7, True, False, None, "é ✓ \u2028 \\" * 3, [], {}], "after": [1, 2]},
    {"head": {"nested": [1, {"deep": "x"}]}, "images": [{"k": "v" * 50}] * 7, "tail": 10**30},
]


def _decode(text, chunk):
    members = []
    # newline="": a lone \r stays one, as in the bytes json.loads reads (so lines count alike)
    for key, value in iter_members(io.StringIO(text, newline=""), "images", chunk_chars=chunk):
        members.append((key, list(value) if isinstance(value, ArrayElements) else value))
    return dict(members)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_members_equal_json_loads_for_any_window(chunk, indent):
    for document in DOCUMENTS:
        text = json.dumps(document, indent=indent, ensure_ascii=False)
        assert _decode(text, chunk) == json.loads(text)
        assert list(_decode(text, chunk)) == list(json.loads(text))  # file order


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
@pytest.mark.parametrize(
    "text",
    [
        '{"images": [',
        '{"images": [1, 2,]}',
        '{\n  "images": [\n    {"a": 1},\n    {"a": tru}\n  ]\n}',
        '{"dataset": "x",\n "images": [1] "n": 2}',
        '{"images": [1]}\n\n  extra',
        '{"images": [1], 3: 4}',
        '{"images": [123',
        "",
        '\ufeff{"images": []}',
        '{"a": 1,\r"images": [1,\r\r 2 x]}',
    ],
)
def test_errors_name_the_line_and_column_json_loads_names(text, chunk):
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as streamed:
        _decode(text, chunk)
    assert (streamed.value.lineno, streamed.value.colno) == (expected.value.lineno, expected.value.colno)


def test_a_top_level_that_is_not_an_object_is_told_apart():
    for text in ("[]", '"images"', "  12"):
        with pytest.raises(NotAnObjectError):
            _decode(text, 4)


def test_the_window_holds_one_element_not_the_document():
    element = {"filename": "x.png", "sentences": [{"raw": "a long caption " * 20}] * 5}
    text = json.dumps({"dataset": "big", "images": [element] * 2000})
    members = iter_members(io.StringIO(text), "images", chunk_chars=4096)
    key, elements = next(members)
    key, elements = next(members)
    widest = count = 0
    for entry in elements:
        assert entry == element
        count += 1
        widest = max(widest, len(elements._scanner.text))
    assert count == 2000 and len(text) > 100 * widest  # a few KB of a multi-MB document
    assert list(members) == []


def test_the_array_must_be_read_before_the_next_member():
    members = iter_members(io.StringIO('{"images": [1, 2], "n": 3}'), "images")
    next(members)
    with pytest.raises(RuntimeError, match="iterate"):
        next(members)


def test_a_repeated_top_level_key_is_refused():
    # json.loads keeps the last value; a stream has already handed the first on
    for text in ('{"images": [], "images": [1]}', '{"dataset": "a", "images": [], "dataset": "b"}'):
        with pytest.raises(DuplicateKeyError, match="more than once"):
            _decode(text, 3)
