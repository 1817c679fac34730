"""File mirrors: project fields into legacy files, keep them in line, audit and adopt.

Example::

    class Agent(Schema):
        killswitch = LWWRegister(bool, default=False)
        __mirrors__ = [
            TextMirror("killswitch", "emergency.txt", values={True: "ACTIVE", False: "INACTIVE"}),
            JsonKeyMirror("killswitch", "config.json", key="emergency_active"),
        ]

    replica = Replica.open(data_dir, "agent-42", Agent)
    mirrors = MirrorSet.from_schema(Agent, root=legacy_dir)
    mirrors.attach(replica)          # files re-synced before anything reads them

The state is the single source of truth: files are written atomically with a
``last_synced`` record, after every change and every ``interval_s``; they are read back
only to audit them or to adopt a hand edit when asked.

Imports ``replica`` only for typing; nothing below imports this package.
"""

from crdtstate.mirrors.audit import Finding, FindingKind, classify
from crdtstate.mirrors.config import (
    MirrorConfig,
    load_mirror_config,
    mirrors_of_schema,
    parse_mirror_config,
)
from crdtstate.mirrors.errors import AdoptError, MirrorConfigError, MirrorError, MirrorWriteError
from crdtstate.mirrors.meta import FieldState, MirrorMeta
from crdtstate.mirrors.mirrorset import Adoption, MirrorSet, SyncAction, SyncResult
from crdtstate.mirrors.spec import JsonKeyMirror, Mirror, Observation, TextMirror

__all__ = [
    "AdoptError",
    "Adoption",
    "FieldState",
    "Finding",
    "FindingKind",
    "JsonKeyMirror",
    "Mirror",
    "MirrorConfig",
    "MirrorConfigError",
    "MirrorError",
    "MirrorMeta",
    "MirrorSet",
    "MirrorWriteError",
    "Observation",
    "SyncAction",
    "SyncResult",
    "TextMirror",
    "classify",
    "load_mirror_config",
    "mirrors_of_schema",
    "parse_mirror_config",
]
