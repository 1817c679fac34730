"""The single-writer lint: direct writes to mirrored files are found, reads are not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstate.lint import LintKind, lint_paths, lint_source, mirrored_names
from crdtstate.mirrors import JsonKeyMirror, TextMirror

NAMES = {"emergency.txt": "text mirror of killswitch", "config.json": "json mirror of killswitch"}


def lines_of(source: str) -> list[int]:
    findings = lint_source(textwrap.dedent(source), "agent.py", NAMES)
    assert all(f.kind is LintKind.DIRECT_WRITE for f in findings), findings
    return [f.line for f in findings]


@pytest.mark.parametrize(
    "source",
    [
        'open("emergency.txt", "w").write("ACTIVE")',
        'open("data/emergency.txt", mode="a")',
        'open(file="emergency.txt", mode="x")',
        'open("emergency.txt", "r+")',
        'io.open("emergency.txt", "wb")',
        'codecs.open("data/emergency.txt", "w", "utf-8")',
        'Path("data/emergency.txt").write_text("ACTIVE")',
        'Path("emergency.txt").open(mode="w")',
        '(Path("data") / "emergency.txt").write_bytes(b"x")',
        '(DATA / "emergency.txt").open("w")',
        'Path(os.path.join(root, "emergency.txt")).touch()',
        'Path("emergency.txt").resolve().unlink()',
        'open(f"{root}/emergency.txt", "w")',
        'open(root + "/emergency.txt", "w")',
        'open(os.path.join(d, "config.json"), "w")',
        'shutil.copy("tmp.json", "config.json")',
        'shutil.copy2(src, dst="data/config.json")',
        'shutil.copyfile(src, Path(d) / "config.json")',
        'shutil.move(tmp, "config.json")',
        'os.replace(tmp, "config.json")',
        'os.rename(tmp, "data/emergency.txt")',
        'os.remove("emergency.txt")',
        'os.open("emergency.txt", os.O_WRONLY | os.O_CREAT)',
        'Path(tmp).replace("emergency.txt")',
        'open("data\\\\emergency.txt", "w")',
    ],
)
def test_each_kind_of_direct_write_is_found(source: str) -> None:
    assert lines_of(source) == [1]


@pytest.mark.parametrize(
    "source",
    [
        'open("emergency.txt").read()',
        'open("emergency.txt", "r")',
        'open("emergency.txt", "rb")',
        'Path("emergency.txt").read_text()',
        'json.load(open("config.json"))',
        'open("emergency.txt.bak", "w")',
        'open("not-emergency.txt", "w")',
        'open("my_config.json", "w")',
        '"emergency.txt".replace("a", "b")',
        'text.replace("x", "emergency.txt")',
        'shutil.copy("config.json", "backup.json")',
        'os.open("emergency.txt", os.O_RDONLY)',
        'print("emergency.txt")',
        '# open("emergency.txt", "w")',
        '"""open("emergency.txt", "w")"""',
    ],
)
def test_reads_copies_from_and_other_files_are_not_flagged(source: str) -> None:
    assert lines_of(source) == []


def test_paths_held_in_variables_and_attributes_are_followed() -> None:
    source = """
    from pathlib import Path
    DATA = Path("data")
    EMERGENCY = DATA / "emergency.txt"
    LEGACY = EMERGENCY

    class Executor:
        def __init__(self) -> None:
            self.flag_file = Path("/srv/agent") / "emergency.txt"

        def stop(self) -> None:
            self.flag_file.write_text("ACTIVE")

    def panic() -> None:
        LEGACY.write_text("ACTIVE")
        with open(EMERGENCY, "w") as f:
            f.write("ACTIVE")
    """
    assert lines_of(source) == [12, 15, 16]


def test_a_json_dump_into_a_handle_opened_on_a_mirror_is_found() -> None:
    source = """
    import json
    def save(config: dict, mode: str) -> None:
        with open("data/config.json", mode) as handle:
            json.dump(config, handle, indent=2)
        out = open("config.json", "w+")
        json.dump(config, fp=out)
        print("{}", file=out)
    """
    findings = lint_source(textwrap.dedent(source), "supervisor.py", NAMES)

    assert [f.line for f in findings] == [4, 5, 6, 7, 8]
    assert "a mode that is not a literal" in findings[0].message
    assert "json.dump() into handle 'handle' opened on 'config.json'" in findings[1].message
    assert "at line 4" in findings[1].message


def test_a_finding_names_file_line_column_and_the_mirror() -> None:
    (finding,) = lint_source('x = 1\nPath("emergency.txt").write_text("x")\n', "src/a.py", NAMES)

    assert str(finding) == (
        "src/a.py:2:1: direct-write: .write_text() writes 'emergency.txt' "
        "(text mirror of killswitch, written only by crdtstate)"
    )


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("def broken(:\n", "cannot parse: invalid syntax"),
        ("x = 1\x00\n", "null bytes"),
        ("(" * 300 + ")" * 300, "cannot parse"),
        (b"# -*- coding: latin-1 -*-\nx = '\xe9'\nopen('emergency.txt', 'w')\n", None),
        (b"x = '\xff'\n", "cannot parse"),
    ],
)
def test_unparsable_sources_are_reported_not_raised(source: str | bytes, match: str | None) -> None:
    findings = lint_source(source, "weird.py", NAMES)

    if match is None:
        assert [f.kind for f in findings] == [LintKind.DIRECT_WRITE]
    else:
        assert [f.kind for f in findings] == [LintKind.UNPARSABLE]
        assert match in findings[0].message and "not checked" in findings[0].message


def test_a_tree_is_walked_skipping_virtualenvs_and_excluded_paths(tmp_path: Path) -> None:
    (tmp_path / "src" / "agent").mkdir(parents=True)
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / "src" / "agent" / "executor.py").write_text('open("emergency.txt", "w")\n')
    (tmp_path / "src" / "agent" / "reader.py").write_text('open("emergency.txt").read()\n')
    (tmp_path / "src" / "agent" / "broken.py").write_text("def (:\n")
    (tmp_path / "src" / "notes.txt").write_text('open("emergency.txt", "w")\n')
    (tmp_path / ".venv" / "lib" / "dep.py").write_text('open("emergency.txt", "w")\n')
    (tmp_path / "tests" / "test_x.py").write_text('open("emergency.txt", "w")\n')

    report = lint_paths([tmp_path, tmp_path / "missing"], NAMES, exclude=["tests"])

    found = [(Path(f.path).name, f.kind) for f in report.findings]
    assert sorted(found) == [
        ("broken.py", LintKind.UNPARSABLE),
        ("executor.py", LintKind.DIRECT_WRITE),
        ("missing", LintKind.UNPARSABLE),
    ]
    assert report.files_checked == 3
    assert report.exit_code == 1
    assert lint_paths([tmp_path / "src" / "agent" / "reader.py"], NAMES).exit_code == 0


def test_mirror_declarations_give_the_names_to_look_for() -> None:
    names = mirrored_names(
        [
            TextMirror("killswitch", "/srv/emergency.txt", values={True: "ACTIVE", False: "NO"}),
            JsonKeyMirror("killswitch", "/srv/config.json", "emergency_active"),
        ]
    )

    assert names == {
        "emergency.txt": "text mirror of killswitch",
        "emergency.txt.meta.json": "last_synced record of the text mirror of killswitch",
        "config.json": "json mirror of killswitch",
    }


python_fragments = st.sampled_from(
    [
        'open("emergency.txt", "w")',
        "open(",
        "with x as y:\n    json.dump(a, y)",
        'Path("config.json").write_text(',
        "def f(:",
        "\x00",
        "lambda: (",
        "os.replace(a, b)",
        "x = 'emergency.txt'",
        "x.write_text('a')",
        "    ",
        "\n",
        "'''",
        "@",
    ]
)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(python_fragments | st.text(max_size=20), max_size=12))
def test_any_source_text_gives_findings_and_never_an_exception(parts: list[str]) -> None:
    findings = lint_source("\n".join(parts), "fuzz.py", NAMES)

    assert all(f.path == "fuzz.py" and f.message for f in findings)
    assert len([f for f in findings if f.kind is LintKind.UNPARSABLE]) <= 1
