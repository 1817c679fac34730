"""Stage-level and parser-level checks of the fault proxy (no sockets except resolving).

Toxic stages are fed chunks directly through a real (tiny) link context, as the reference
unit-tests its toxics by feeding channels; parsers get hand-picked and generated input.
"""

from __future__ import annotations

import itertools
import random
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.__main__ import build_parser, main
from chaos.faultproxy.addr import format_hostport, resolve_listen, split_host_port
from chaos.faultproxy.errors import ApiError, ListenError
from chaos.faultproxy.model import (
    INT64_MAX,
    LatencyAttributes,
    LimitDataAttributes,
    ProxyInput,
    SlicerAttributes,
    ToxicInput,
    decode_json,
    parse_body,
    parse_object,
    parse_populate,
)
from chaos.faultproxy.toxics import (
    EOF,
    Chunk,
    Direction,
    Item,
    LatencyStage,
    LimitDataStage,
    SlicerStage,
    Toxic,
    slice_bounds,
)

# -- a real link context for stages ----------------------------------------------------------


class Link:
    """The smallest real LinkContext: a seeded generator and a record of connection ends."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.ends: list[str] = []

    def close_connection(self) -> None:
        self.ends.append("close")

    def reset_connection(self) -> None:
        self.ends.append("reset")


def toxic(type_: str, attributes: Any, toxicity: float = 1.0) -> Toxic:
    return Toxic(
        f"{type_}_downstream", type_, "downstream", Direction.DOWNSTREAM, toxicity, attributes
    )


async def feed(stage: Any, items: list[Item]) -> list[Item]:
    out: list[Item] = []
    for item in items:
        async for produced in stage.pipe(item):
            out.append(produced)
    return out


def sizes(items: list[Item]) -> list[int | str]:
    return [len(item.data) if isinstance(item, Chunk) else "EOF" for item in items]


# -- limit_data (reference stage tests, limit 100) --------------------------------------------


@pytest.mark.parametrize(
    ("writes", "expected"),
    [
        ([50], [50]),
        ([100], [100, "EOF"]),
        ([150], [100, "EOF"]),
        ([25, 25, 25, 25], [25, 25, 25, 25, "EOF"]),
        ([90, 20], [90, 10, "EOF"]),
    ],
)
async def test_limit_data_stage_forwards_up_to_its_limit(
    writes: list[int], expected: list[int | str]
) -> None:
    stage = LimitDataStage(toxic("limit_data", LimitDataAttributes(bytes=100)), Link())
    stage.attach()
    assert sizes(await feed(stage, [Chunk(b"x" * n, 0.0) for n in writes])) == expected


async def test_limit_data_zero_drops_the_first_chunk_and_ends() -> None:
    stage = LimitDataStage(toxic("limit_data", LimitDataAttributes(bytes=0)), Link())
    stage.attach()
    assert sizes(await feed(stage, [Chunk(b"abc", 0.0)])) == ["EOF"]


async def test_limit_data_count_survives_an_interrupting_update() -> None:
    the_toxic = toxic("limit_data", LimitDataAttributes(bytes=100))
    stage = LimitDataStage(the_toxic, Link())
    stage.attach()
    assert sizes(await feed(stage, [Chunk(b"x" * 90, 0.0)])) == [90]
    stage.update()
    assert sizes(await feed(stage, [Chunk(b"x" * 20, 0.0)])) == [10, "EOF"]


async def test_an_inactive_draw_follows_toxicity() -> None:
    never = LimitDataStage(toxic("limit_data", LimitDataAttributes(bytes=0), toxicity=0.0), Link())
    always = LimitDataStage(toxic("limit_data", LimitDataAttributes(bytes=0), toxicity=1.0), Link())
    never.attach()
    always.attach()
    assert (never.active, always.active) == (False, True)


# -- slicer ------------------------------------------------------------------------------------


def test_slicer_reference_piece_counts() -> None:
    cuts = slice_bounds(480_000, 1024, 512, random.Random(1))
    assert 240 <= len(cuts) - 1 <= 720
    assert slice_bounds(24, 1, 0, random.Random(1)) == list(range(25))


def test_slicer_treats_a_zero_average_as_one() -> None:
    assert slice_bounds(5, 0, 0, random.Random(1)) == [0, 1, 2, 3, 4, 5]


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(0, 5000),
    average=st.integers(0, 2000),
    variation=st.integers(0, INT64_MAX),
    seed=st.integers(0, 2**32),
)
def test_slicer_cuts_always_cover_the_chunk_in_order(
    length: int, average: int, variation: int, seed: int
) -> None:
    cuts = slice_bounds(length, average, variation, random.Random(seed))
    assert cuts[0] == 0 and cuts[-1] == length
    assert all(a < b for a, b in itertools.pairwise(cuts)) or length == 0


async def test_slicer_stage_emits_the_same_bytes_in_pieces() -> None:
    stage = SlicerStage(
        toxic("slicer", SlicerAttributes(average_size=1, size_variation=0, delay=0)), Link()
    )
    stage.attach()
    out = await feed(stage, [Chunk(b"abcdefghijklmnopqrstuvwx", 0.0), EOF])
    assert sizes(out) == [1] * 24 + ["EOF"]
    assert (
        b"".join(item.data for item in out if isinstance(item, Chunk))
        == b"abcdefghijklmnopqrstuvwx"
    )


# -- latency -----------------------------------------------------------------------------------


async def test_latency_stage_advances_the_stamp_by_its_delay() -> None:
    stage = LatencyStage(toxic("latency", LatencyAttributes(latency=50)), Link())
    stage.attach()
    out = await feed(stage, [Chunk(b"a", -10.0)])  # due long ago: leaves at once
    assert isinstance(out[0], Chunk) and out[0].stamp == pytest.approx(-10.0 + 0.05)


# -- request bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [(b'  {"a": 1} trailing', {"a": 1}), (b"[]", []), (b'"x"', "x"), (b"\n7", 7)],
)
def test_decode_reads_the_first_json_value(raw: bytes, value: Any) -> None:
    assert decode_json(raw) == value


@pytest.mark.parametrize(
    "raw", [b"", b"   ", b"{", b"NaN", b"[Infinity]", b"\xff{}", b"[" * 100_000, b"1" * 5000]
)
def test_decode_refuses_bad_bodies_with_400(raw: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        decode_json(raw)
    assert caught.value.status == 400 and caught.value.message.startswith("bad request body: ")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_of_any_bytes_is_a_value_or_a_400(raw: bytes) -> None:
    try:
        decode_json(raw)
    except ApiError as exc:
        assert exc.status == 400


def test_null_means_absent_and_unknown_keys_are_ignored() -> None:
    spec = parse_body(
        b'{"name": "p", "upstream": "u", "enabled": null, "toxics": null, "extra": [1]}', ProxyInput
    )
    assert (spec.name, spec.upstream, spec.enabled, spec.listen) == ("p", "u", True, "")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"toxicity": True}, "toxicity"),
        ({"toxicity": "0.5"}, "toxicity"),
        ({"toxicity": 1e39}, "toxicity"),
        ({"name": 5}, "name"),
        ({"stream": ["up"]}, "stream"),
    ],
)
def test_wrong_types_name_the_field(body: dict[str, Any], where: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_object(body, ToxicInput)
    assert caught.value.message.startswith(f"bad request body: {where}: ")


def test_populate_numbers_entries_from_one() -> None:
    with pytest.raises(ApiError) as caught:
        parse_populate(b'[{"name": "a", "upstream": "u"}, {"name": "b"}]')
    assert caught.value.message == "missing required field: upstream at proxy 2"


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("127.0.0.1:80", ("127.0.0.1", "80")),
        ("[::1]:80", ("::1", "80")),
        (":0", ("", "0")),
        ("h:", ("h", "")),
    ],
)
def test_split_host_port(address: str, parts: tuple[str, str]) -> None:
    assert split_host_port(address) == parts


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("local373", "missing port"),
        ("1:2:3", "too many colons"),
        ("[::1", "missing ']'"),
        ("[::1]", "missing port"),
    ],
)
def test_split_host_port_errors_say_what_is_wrong(address: str, reason: str) -> None:
    with pytest.raises(ListenError, match=reason):
        split_host_port(address)


async def test_resolve_prefers_ipv4_and_reports_go_style_errors() -> None:
    target = await resolve_listen("localhost:1234")
    assert (target.host, target.port, target.family) == ("127.0.0.1", 1234, socket.AF_INET)
    assert (await resolve_listen("[::1]:5")).display() == "[::1]:5"
    with pytest.raises(ListenError, match="invalid port"):
        await resolve_listen("127.0.0.1:70000")
    with pytest.raises(ListenError, match="no such host"):
        await resolve_listen("bad host!:1")
    assert format_hostport("::", 9) == "[::]:9"


# -- command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags", [["-host", "127.0.0.1", "-port", "0"], ["--host", "127.0.0.1", "--port", "0"]]
)
def test_cli_accepts_single_and_double_dash_flags(flags: list[str]) -> None:
    args = build_parser().parse_args(["toxiproxy", *flags, "-seed", "4"])
    assert (args.host, args.port, args.seed) == ("127.0.0.1", 0, 4)


def test_cli_defaults_match_toxiproxy() -> None:
    args = build_parser().parse_args(["toxiproxy"])
    assert (args.host, args.port, args.config, args.seed) == ("localhost", 8474, None, None)


@pytest.mark.parametrize(("value", "says"), [("70000", "0..65535"), ("http", "integer")])
def test_cli_rejects_a_bad_port_naming_it(
    value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["toxiproxy", "--port", value])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "port" in error and says in error


def test_cli_version_prints_and_exits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toxiproxy", "-version"]) == 0
    assert "2.12.0" in capsys.readouterr().out


def test_cli_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err
