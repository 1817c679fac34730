"""The single-writer lint: find code that writes a mirrored file behind crdtstate's back.

A mirrored file (``emergency.txt``, ``config.json``) must have exactly one writer, the
replica's :class:`~crdtstate.mirrors.MirrorSet` (background/000, section 4.2). This module
parses Python files with :mod:`ast` and reports every place that writes one directly:
``open(<mirror>, "w"/"a"/"x"/"+")`` (and ``io.open``, ``codecs.open``, ``os.open`` with
write flags, ``Path.open``), ``Path.write_text``/``write_bytes``/``touch``/``unlink``,
``json.dump`` (or any ``*.dump``) into a handle opened on it, ``shutil`` copies and moves
and ``os.replace``/``os.rename`` onto it, and its deletion.

A path refers to a mirror when a string literal in it ends with the mirrored file's name:
``"data/emergency.txt"``, ``Path(d) / "emergency.txt"``, ``os.path.join(d, "config.json")``,
``f"{d}/emergency.txt"``, or a variable or attribute assigned one of those anywhere in the
file (assignments are tracked per file, not per scope: the lint errs on reporting).

Unparsable files are reported, never raised. Pure apart from reading the files it is given;
imports only the mirror declarations (``crdtstate.mirrors.spec``).
"""

from __future__ import annotations

import ast
import enum
import fnmatch
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from crdtstate.mirrors.spec import Mirror, TextMirror

SOURCE_BYTES_MAX = 10 << 20
"""Larger Python files are reported as unparsable rather than loaded."""

DEFAULT_EXCLUDES = (
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    "node_modules",
    "__pycache__",
    "site-packages",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)
"""Directory names never descended into."""

_OPENERS = {("", "open"), ("io", "open"), ("codecs", "open")}
_OS_WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
_PATH_WRAPPERS = {
    "Path",
    "PurePath",
    "PosixPath",
    "WindowsPath",
    "PurePosixPath",
    "PureWindowsPath",
    "join",
    "joinpath",
    "abspath",
    "realpath",
    "normpath",
    "expanduser",
    "expandvars",
    "fspath",
    "str",
    "with_name",
}
_PATH_METHODS_SAME = {"resolve", "absolute", "expanduser"}
_DESTINATION_CALLS = {
    ("shutil", "copy"): "copies onto",
    ("shutil", "copy2"): "copies onto",
    ("shutil", "copyfile"): "copies onto",
    ("shutil", "move"): "moves a file onto",
    ("os", "replace"): "renames a file onto",
    ("os", "rename"): "renames a file onto",
    ("os", "link"): "links onto",
    ("os", "symlink"): "links onto",
}
_SINGLE_PATH_CALLS = {
    ("os", "remove"): "deletes",
    ("os", "unlink"): "deletes",
    ("os", "truncate"): "truncates",
}
_PATH_WRITE_METHODS = {
    "write_text": "writes",
    "write_bytes": "writes",
    "touch": "touches",
    "unlink": "deletes",
}


class LintKind(enum.StrEnum):
    """What a lint finding is about."""

    DIRECT_WRITE = "direct-write"
    UNPARSABLE = "unparsable"


@dataclass(frozen=True, slots=True, order=True)
class LintFinding:
    """One place that writes a mirrored file directly (or a file that could not be checked).

    Attributes:
        path: the Python file.
        line: 1-based line (0 when unknown).
        col: 1-based column (0 when unknown).
        kind: what was found.
        message: what the code does, to which mirrored file.
    """

    path: str
    line: int
    col: int
    kind: LintKind
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.kind}: {self.message}"


@dataclass(slots=True)
class LintReport:
    """The result of linting a tree.

    Attributes:
        findings: sorted by file and line.
        files_checked: how many Python files were read.
    """

    findings: list[LintFinding] = field(default_factory=list)
    files_checked: int = 0

    @property
    def exit_code(self) -> int:
        """0 when clean, 1 on any finding (unparsable files included: they went unchecked)."""
        return 1 if self.findings else 0


def _names_map(names: Mapping[str, str] | Collection[str]) -> dict[str, str]:
    if isinstance(names, Mapping):
        out = {os.path.basename(str(k)): str(v) for k, v in names.items()}
    else:
        out = {os.path.basename(str(n)): "a mirrored file" for n in names}
    return {k: v for k, v in out.items() if k}


def lint_source(
    source: str | bytes, filename: str, names: Mapping[str, str] | Collection[str]
) -> list[LintFinding]:
    """Findings for one Python source.

    Args:
        source: the file's content.
        filename: the name to report it under.
        names: mirrored file names (``{name: what mirrors it}`` or just names); only the
            final path component counts.

    Returns:
        The findings, sorted; a source that does not parse gives one ``UNPARSABLE`` finding.
    """
    mirrored = _names_map(names)
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        return [
            LintFinding(
                filename,
                exc.lineno or 0,
                exc.offset or 0,
                LintKind.UNPARSABLE,
                f"cannot parse: {exc.msg}; this file was not checked",
            )
        ]
    except (ValueError, RecursionError, MemoryError) as exc:
        why = "nesting too deep" if isinstance(exc, RecursionError) else str(exc) or "invalid"
        return [
            LintFinding(
                filename,
                0,
                0,
                LintKind.UNPARSABLE,
                f"cannot parse: {why}; this file was not checked",
            )
        ]
    if not mirrored:
        return []
    try:
        checker = _Checker(filename, mirrored)
        checker.track(tree)
        checker.visit(tree)
    except RecursionError:
        return [
            LintFinding(
                filename,
                0,
                0,
                LintKind.UNPARSABLE,
                "cannot check: nesting too deep; this file was not checked",
            )
        ]
    return sorted(set(checker.findings))


def lint_paths(
    paths: Iterable[str | os.PathLike[str]],
    names: Mapping[str, str] | Collection[str],
    *,
    exclude: Iterable[str] = (),
) -> LintReport:
    """Lint every ``.py`` file under ``paths`` (files or directories).

    Args:
        paths: files and directories to check.
        names: mirrored file names (see :func:`lint_source`).
        exclude: extra glob patterns; a file whose path (or any directory name on it)
            matches one is skipped. :data:`DEFAULT_EXCLUDES` directories are always skipped.

    Returns:
        The report. A path that does not exist is an ``UNPARSABLE`` finding.
    """
    patterns = list(exclude)
    report = LintReport()
    for file in _python_files(paths, patterns, report):
        report.files_checked += 1
        try:
            with open(file, "rb") as handle:
                data = handle.read(SOURCE_BYTES_MAX + 1)
        except OSError as exc:
            report.findings.append(
                LintFinding(
                    str(file), 0, 0, LintKind.UNPARSABLE, f"cannot read: {exc.strerror or exc}"
                )
            )
            continue
        if len(data) > SOURCE_BYTES_MAX:
            report.findings.append(
                LintFinding(
                    str(file),
                    0,
                    0,
                    LintKind.UNPARSABLE,
                    f"larger than {SOURCE_BYTES_MAX} bytes; this file was not checked",
                )
            )
            continue
        report.findings.extend(lint_source(data, str(file), names))
    report.findings.sort()
    return report


def _excluded(path: Path, patterns: list[str]) -> bool:
    text = path.as_posix()
    return any(
        fnmatch.fnmatch(text, p) or any(fnmatch.fnmatch(part, p) for part in path.parts)
        for p in patterns
    )


def _python_files(
    paths: Iterable[str | os.PathLike[str]], patterns: list[str], report: LintReport
) -> list[Path]:
    files: list[Path] = []
    for given in paths:
        root = Path(given)
        if root.is_file():
            if not _excluded(root, patterns):
                files.append(root)
            continue
        if not root.is_dir():
            report.findings.append(
                LintFinding(str(root), 0, 0, LintKind.UNPARSABLE, "no such file or directory")
            )
            continue
        for directory, dirnames, filenames in os.walk(root, followlinks=False):
            base = Path(directory)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in DEFAULT_EXCLUDES and not _excluded(base / d, patterns)
            )
            for name in sorted(filenames):
                candidate = base / name
                if name.endswith(".py") and not _excluded(candidate, patterns):
                    files.append(candidate)
    return files


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a name or attribute chain, else ``None``."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _func_name(call: ast.Call) -> tuple[str, str]:
    """``(module or receiver, function)`` of a call: ``("os", "replace")``, ``("", "open")``."""
    func = call.func
    if isinstance(func, ast.Name):
        return "", func.id
    if isinstance(func, ast.Attribute):
        receiver = _dotted(func.value)
        return (receiver.rsplit(".", 1)[-1] if receiver else "?"), func.attr
    return "?", ""


def _arg(call: ast.Call, index: int, *keywords: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg in keywords:
            return kw.value
    if len(call.args) > index and not any(
        isinstance(a, ast.Starred) for a in call.args[: index + 1]
    ):
        return call.args[index]
    return None


class _Checker(ast.NodeVisitor):
    """One file's walk: tracks mirror paths and handles, records direct writes."""

    def __init__(self, filename: str, mirrored: dict[str, str]) -> None:
        self.filename = filename
        self.mirrored = mirrored
        self.paths: dict[str, str] = {}  # variable or attribute -> mirrored name
        self.handles: dict[str, tuple[str, int]] = {}  # handle -> (mirrored name, open line)
        self.findings: list[LintFinding] = []

    # -- which expressions name a mirror ---------------------------------------------------

    def _literal(self, text: str) -> str | None:
        normalized = text.replace("\\", "/")
        for name in self.mirrored:
            if normalized == name or normalized.endswith("/" + name):
                return name
        return None

    def refers(self, node: ast.expr | None, depth: int = 0) -> str | None:
        """The mirrored file name ``node`` evaluates to a path of, if it visibly does."""
        if node is None or depth > 20:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            value = node.value
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return self._literal(text)
        if isinstance(node, ast.JoinedStr):
            tail = ""
            for part in reversed(node.values):
                if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                    break
                tail = part.value + tail
            return self._literal(tail) if tail else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div | ast.Add):
            return self.refers(node.right, depth + 1)
        if isinstance(node, ast.Name | ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None and dotted in self.paths:
                return self.paths[dotted]
            return None
        if isinstance(node, ast.Call):
            _, name = _func_name(node)
            if name in _PATH_WRAPPERS and node.args:
                return self.refers(node.args[-1], depth + 1)
            if (
                name in _PATH_METHODS_SAME
                and isinstance(node.func, ast.Attribute)
                and not node.args
            ):
                return self.refers(node.func.value, depth + 1)
        return None

    # -- assignments (a few rounds, so chains of names resolve) ----------------------------

    def track(self, tree: ast.AST) -> None:
        """Record variables and attributes assigned a mirror path anywhere in the file."""
        assigns: list[tuple[list[ast.expr], ast.expr]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                assigns.append((node.targets, node.value))
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
                assigns.append(([node.target], node.value))
        for _ in range(5):
            before = len(self.paths)
            for targets, value in assigns:
                name = self.refers(value)
                if name is None:
                    continue
                for target in targets:
                    dotted = _dotted(target)
                    if dotted is not None:
                        self.paths.setdefault(dotted, name)
            if len(self.paths) == before:
                break

    # -- findings --------------------------------------------------------------------------

    def report(self, node: ast.AST, message: str) -> None:
        self.findings.append(
            LintFinding(
                self.filename,
                getattr(node, "lineno", 0),
                getattr(node, "col_offset", -1) + 1,
                LintKind.DIRECT_WRITE,
                message,
            )
        )

    def _what(self, name: str) -> str:
        return f"{name!r} ({self.mirrored[name]}, written only by crdtstate)"

    def _write_mode(self, mode: ast.expr | None) -> str | None:
        """``"mode 'w'"`` when ``mode`` writes, ``"a non-literal mode"``, or ``None`` (read)."""
        if mode is None:
            return None
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            return f"mode {mode.value!r}" if set(mode.value) & set("wax+") else None
        return "a mode that is not a literal"

    def _opened(self, call: ast.Call) -> tuple[str, str] | None:
        """``(mirrored name, mode)`` when ``call`` opens a mirror for writing."""
        module, name = _func_name(call)
        if (module, name) in _OPENERS:
            target, mode = _arg(call, 0, "file", "filename"), _arg(call, 1, "mode")
        elif name == "open" and isinstance(call.func, ast.Attribute) and module != "os":
            target, mode = call.func.value, _arg(call, 0, "mode")
        else:
            return None
        mirrored = self.refers(target)
        if mirrored is None:
            return None
        how = self._write_mode(mode)
        return None if how is None else (mirrored, how)

    def visit_With(self, node: ast.With) -> None:
        self._with_items(node.items)
        self.generic_visit(node)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> None:
        self._with_items(node.items)
        self.generic_visit(node)

    def _with_items(self, items: list[ast.withitem]) -> None:
        for item in items:
            if isinstance(item.context_expr, ast.Call) and item.optional_vars is not None:
                opened = self._opened(item.context_expr)
                handle = _dotted(item.optional_vars)
                if opened is not None and handle is not None:
                    self.handles[handle] = (opened[0], item.context_expr.lineno)

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Call):
            opened = self._opened(node.value)
            if opened is not None:
                for target in node.targets:
                    handle = _dotted(target)
                    if handle is not None:
                        self.handles[handle] = (opened[0], node.value.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        self._check_call(node)
        self.generic_visit(node)

    def _check_call(self, node: ast.Call) -> None:
        module, name = _func_name(node)
        opened = self._opened(node)
        if opened is not None:
            self.report(node, f"opens {self._what(opened[0])} for writing ({opened[1]})")
            return
        if (module, name) == ("os", "open"):
            mirrored = self.refers(_arg(node, 0, "path"))
            flags = _arg(node, 1, "flags")
            if mirrored is not None and flags is not None:
                used = {
                    n.attr if isinstance(n, ast.Attribute) else n.id
                    for n in ast.walk(flags)
                    if isinstance(n, ast.Attribute | ast.Name)
                }
                if used & _OS_WRITE_FLAGS or not isinstance(flags, ast.Attribute | ast.BinOp):
                    self.report(node, f"os.open() opens {self._what(mirrored)} with write flags")
            return
        if (module, name) in _DESTINATION_CALLS:
            mirrored = self.refers(_arg(node, 1, "dst"))
            if mirrored is not None:
                verb = _DESTINATION_CALLS[(module, name)]
                self.report(node, f"{module}.{name}() {verb} {self._what(mirrored)}")
            return
        if (module, name) in _SINGLE_PATH_CALLS:
            mirrored = self.refers(_arg(node, 0, "path"))
            if mirrored is not None:
                verb = _SINGLE_PATH_CALLS[(module, name)]
                self.report(node, f"{module}.{name}() {verb} {self._what(mirrored)}")
            return
        if isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            is_literal = isinstance(receiver, ast.Constant)
            if name in _PATH_WRITE_METHODS and not is_literal:
                mirrored = self.refers(receiver)
                if mirrored is not None:
                    verb = _PATH_WRITE_METHODS[name]
                    self.report(node, f".{name}() {verb} {self._what(mirrored)}")
                    return
            if name in ("rename", "replace") and not is_literal and len(node.args) == 1:
                onto = self.refers(node.args[0])
                if onto is not None:
                    self.report(node, f".{name}() moves a file onto {self._what(onto)}")
                    return
                moved = self.refers(receiver)
                if moved is not None:
                    self.report(node, f".{name}() moves {self._what(moved)} away")
                    return
        if name in ("dump", "copyfileobj"):
            index, keywords = (
                (1, ("fp", "file", "stream", "f")) if name == "dump" else (1, ("fdst",))
            )
            handle_node = _arg(node, index, *keywords)
            handle = None if handle_node is None else _dotted(handle_node)
            if handle is not None and handle in self.handles:
                mirrored, line = self.handles[handle]
                label = f"{module}.{name}" if module else name
                self.report(
                    node,
                    f"{label}() into handle {handle!r} opened on {self._what(mirrored)} "
                    f"at line {line}",
                )
        if name == "print":
            handle_node = next((kw.value for kw in node.keywords if kw.arg == "file"), None)
            handle = None if handle_node is None else _dotted(handle_node)
            if handle is not None and handle in self.handles:
                mirrored, line = self.handles[handle]
                self.report(
                    node,
                    f"print() into handle {handle!r} opened on {self._what(mirrored)} "
                    f"at line {line}",
                )


def mirrored_names(mirrors: Iterable[Mirror]) -> dict[str, str]:
    """``{file name: what mirrors it}`` for mirrors; a text mirror's sidecar counts too."""
    out: dict[str, str] = {}
    for mirror in mirrors:
        what = f"{mirror.kind} mirror of {mirror.source}"
        out.setdefault(mirror.path.name, what)
        if isinstance(mirror, TextMirror):
            out.setdefault(mirror.sidecar.name, f"last_synced record of the {what}")
    return out
