"""Mirror files survive kill -9: always old or new, never torn, and repaired on restart.

A child process flips a mirrored killswitch in a loop (every flip rewrites a text mirror,
its sidecar and a JSON mirror) and is SIGKILLed at a random point; a reader thread checks
every file it can read while the child runs, and the parent checks them after the kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from crdtstate import LWWRegister, Replica, Schema
from crdtstate.mirrors import FindingKind, JsonKeyMirror, MirrorSet, TextMirror

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from crdtstate import LWWRegister, Replica, Schema
from crdtstate.mirrors import JsonKeyMirror, MirrorSet, TextMirror

class Agent(Schema):
    killswitch = LWWRegister(bool, default=False)
    __mirrors__ = [
        TextMirror("killswitch", "emergency.txt", values={True: "ACTIVE", False: "INACTIVE"}),
        JsonKeyMirror("killswitch", "config.json", key="emergency_active"),
    ]

replica = Replica.open(sys.argv[1], "crash", Agent, replica_id="executor")
mirrors = MirrorSet.from_schema(Agent, root=sys.argv[2], interval_s=None, on_report=None)
mirrors.attach(replica)
print("ready", flush=True)
for i in range(100_000):
    replica.state.killswitch.set(i % 2 == 0)
    print(i, flush=True)
"""


class Agent(Schema):
    killswitch = LWWRegister(bool, default=False)
    __mirrors__ = [
        TextMirror("killswitch", "emergency.txt", values={True: "ACTIVE", False: "INACTIVE"}),
        JsonKeyMirror("killswitch", "config.json", key="emergency_active"),
    ]


def check_files(legacy: Path) -> None:
    """Every mirror file parses and holds a value the mirror can write."""
    text = (legacy / "emergency.txt").read_text()
    assert text in ("ACTIVE\n", "INACTIVE\n"), repr(text)
    doc = json.loads((legacy / "config.json").read_text())
    assert doc["other"] == {"kept": True}
    assert isinstance(doc["emergency_active"], bool)
    sidecar = legacy / "emergency.txt.meta.json"
    if sidecar.exists():
        assert json.loads(sidecar.read_text())["field"] == "killswitch"


def reader(legacy: Path, stop: threading.Event, problems: list[str], reads: list[int]) -> None:
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            check_files(legacy)
            reads[0] += 1
        except FileNotFoundError:
            continue  # before the first sync
        except (AssertionError, ValueError, KeyError) as exc:
            problems.append(repr(exc))
            return


def test_mirror_files_are_old_or_new_after_kill_9_and_repaired_on_restart(tmp_path: Path) -> None:
    rng = random.Random(20240607)
    data, legacy, script = tmp_path / "data", tmp_path / "legacy", tmp_path / "child.py"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"other": {"kept": True}}))
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    total_reads = 0
    for round_ in range(4):
        stop, problems, reads = threading.Event(), list[str](), [0]
        watcher = threading.Thread(target=reader, args=(legacy, stop, problems, reads))
        child = subprocess.Popen(
            [sys.executable, str(script), str(data), str(legacy)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        try:
            assert child.stdout is not None and child.stderr is not None
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
            watcher.start()
            flips = rng.randint(3, 40)
            deadline = time.monotonic() + 60
            for _ in range(flips):
                line = child.stdout.readline()
                assert line, "child died early"
                assert time.monotonic() < deadline
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
            stop.set()
            if watcher.ident is not None:
                watcher.join(timeout=30)
        total_reads += reads[0]
        assert child.returncode == -signal.SIGKILL
        assert problems == [], f"round {round_}: a reader saw a torn file: {problems}"
        check_files(legacy)

        with Replica.open(data, "crash", Agent, replica_id="executor") as replica:
            auditor = MirrorSet.from_schema(Agent, root=legacy, interval_s=None, on_report=None)
            auditor.bind(replica)
            kinds = {f.kind for f in auditor.audit()}
            # A kill between the store and the files leaves them stale, never "hand-edited".
            assert kinds <= {FindingKind.STALE}, [str(f) for f in auditor.audit()]
            with MirrorSet.from_schema(Agent, root=legacy, interval_s=None) as mirrors:
                mirrors.attach(replica)
                assert mirrors.audit() == []
        leftovers = [p.name for p in legacy.iterdir() if p.name.endswith(".tmp")]
        assert len(leftovers) <= 3 * (round_ + 1)
    assert total_reads > 0, "the reader never saw the files while a child was writing"
