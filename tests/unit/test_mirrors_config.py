"""Mirror config files (TOML/JSON): what they declare, and clear errors for everything else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstate.mirrors import (
    JsonKeyMirror,
    MirrorConfigError,
    MirrorSet,
    TextMirror,
    load_mirror_config,
    parse_mirror_config,
)

CONFIG = """
root = "legacy"

[[mirror]]
field = "killswitch"
type = "text"
path = "emergency.txt"
values = { true = "ACTIVE", false = "INACTIVE" }

[[mirror]]
field = "killswitch"
type = "json"
path = "/abs/config.json"
key = "emergency_active"

[[mirror]]
field = "mode"
type = "text"
path = "mode.txt"
values = [["true", "YES"], [true, "ON"]]
newline = false

[[mirror]]
field = "config"
type = "json"
path = "settings.json"
map_key = "region"
meta_key = "_meta"
"""


def write(tmp_path: Path, text: str, name: str = "mirrors.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_toml_config_declares_text_and_json_mirrors(tmp_path: Path) -> None:
    config = load_mirror_config(write(tmp_path, CONFIG))

    text, key, mode, region = config.mirrors
    assert config.root == tmp_path / "legacy"
    assert isinstance(text, TextMirror) and text.path == tmp_path / "legacy" / "emergency.txt"
    assert sorted(text.values, key=str) == [(False, "INACTIVE"), (True, "ACTIVE")]
    assert isinstance(key, JsonKeyMirror) and key.key == "emergency_active"
    assert key.path == Path("/abs/config.json")
    assert isinstance(mode, TextMirror) and mode.newline is False
    assert sorted(mode.values, key=str) == [("true", "YES"), (True, "ON")]
    assert isinstance(region, JsonKeyMirror) and region.key == "config"
    assert region.map_key == "region" and region.meta_key == "_meta"


def test_a_json_config_with_the_same_shape_is_accepted(tmp_path: Path) -> None:
    doc = {"mirror": [{"field": "flag", "type": "text", "path": "f.txt"}]}
    config = load_mirror_config(write(tmp_path, json.dumps(doc), "mirrors.json"))

    assert [m.path for m in config.mirrors] == [tmp_path / "f.txt"]


def test_mirror_set_from_config_uses_the_config_root(tmp_path: Path) -> None:
    ms = MirrorSet.from_config(write(tmp_path, CONFIG), interval_s=None)

    assert ms.root == tmp_path / "legacy"
    assert len(ms.mirrors) == 4


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("root = 'x'\nmirrors = []", r"unknown top-level key\(s\) 'mirrors'"),
        ("mirror = 3", "array of tables"),
        ("root = ''", "'root' must be"),
        ("[[mirror]]\nfield='f'\ntype='csv'\npath='x'", 'must be "text" or "json"'),
        ("[[mirror]]\nfield='f'\ntype='text'\npath='x'\nkey='k'", r"unknown key\(s\) 'key'"),
        ("[[mirror]]\ntype='text'\npath='x'", "'field' must be a non-empty string"),
        ("[[mirror]]\nfield='f'\ntype='json'\npath=''", "'path' must be a non-empty string"),
        ("[[mirror]]\nfield='f'\ntype='text'\npath='x'\nnewline='yes'", "true or false"),
        ("[[mirror]]\nfield='f'\ntype='text'\npath='x'\nvalues=3", "table or a list of pairs"),
        ("[[mirror]]\nfield='f'\ntype='text'\npath='x'\nvalues=[[1]]", "pairs must be"),
        (
            "[[mirror]]\nfield='f'\ntype='text'\npath='x'\nvalues={true='A', false='A'}",
            "mapped twice",
        ),
        ("[[mirror]]\nfield='f-1'\ntype='text'\npath='x'", "invalid field name"),
        (
            "[[mirror]]\nfield='f'\ntype='text'\npath='x'\n"
            "[[mirror]]\nfield='g'\ntype='json'\npath='x'",
            "would both write",
        ),
        ("[[mirror]\n", "not valid TOML"),
    ],
)
def test_bad_configs_name_the_entry_and_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(MirrorConfigError, match=match) as info:
        load_mirror_config(path)

    assert str(path) in str(info.value)


def test_a_missing_or_binary_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MirrorConfigError, match="cannot read mirror config"):
        load_mirror_config(tmp_path / "nope.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MirrorConfigError, match="not valid TOML"):
        load_mirror_config(binary)


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
entry_keys = st.sampled_from(
    ["field", "type", "path", "values", "map_key", "key", "meta_key", "newline", "x"]
)
entries = st.dictionaries(
    entry_keys,
    json_values | st.sampled_from(["text", "json", "flag", "a.txt", "k"]),
    max_size=6,
)
documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"mirror": st.lists(entries, max_size=4)},
        optional={"root": json_values | st.just("sub")},
    ),
)


@settings(max_examples=300, deadline=None)
@given(doc=documents)
def test_any_decoded_document_gives_mirrors_or_a_config_error(doc: Any) -> None:
    try:
        config = parse_mirror_config(doc, base=Path("/tmp/base"), source="doc")
    except MirrorConfigError as exc:
        assert str(exc).startswith("doc")
    else:
        assert all(m.path.is_absolute() for m in config.mirrors)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_file_bytes_give_mirrors_or_a_config_error(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "mirrors.toml"
    path.write_bytes(data)
    try:
        load_mirror_config(path)
    except MirrorConfigError as exc:
        assert str(path) in str(exc)
