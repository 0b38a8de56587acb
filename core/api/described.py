"""What ``metadata()`` answered, kept while the metadata store is unchanged.

Why: ``metadata()`` cost ~40-50 us of CPU per call (py-spy: half in reading,
verifying and parsing the record, a third in building the answer), against a
dictionary lookup in chuk-artifacts. A record cannot change without a commit,
and the store tells whether any commit (of this process or another) may have
happened through :meth:`MetaStore.read_token`: an answer taken under one
token is reused only under the same token. Expiry and access are checked on
every call, as the slow path does; only reading and describing are saved.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

from core.models import ArtifactMetadata
from core.nodes import Node

MAX_DESCRIBED = 1024  # answers kept; forgotten wholesale past this (a few MiB at most)


class Described(NamedTuple):
    """One answer and the node it describes (never handed out: read-only)."""

    token: object
    node: Node
    answer: ArtifactMetadata


class DescribedCache:
    """Answers by artifact id, each valid only under the store token it was read under."""

    def __init__(self, limit: int = MAX_DESCRIBED) -> None:
        self._answers: dict[str, Described] = {}
        self._limit = limit

    def get(self, artifact_id: str, token: object) -> Described | None:
        found = self._answers.get(artifact_id)
        if found is None or found.token != token:
            return None
        return found

    def put(self, artifact_id: str, token: object, node: Node, answer: ArtifactMetadata) -> None:
        if len(self._answers) >= self._limit:
            self._answers.clear()
        self._answers[artifact_id] = Described(token, node, answer)


def handed_out(answer: ArtifactMetadata) -> ArtifactMetadata:
    """A copy the caller may change freely (``meta`` is a dict of the caller's own)."""
    return answer.model_copy(update={"meta": copy.deepcopy(answer.meta)})
