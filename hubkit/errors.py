"""One exception type per user-facing failure; each carries a one-line message.

The CLI prints ``error: <message>`` and exits 1 for any :class:`HubkitError`; ``--debug`` shows the
traceback. Messages name the file and the place (``file:line`` or ``file: key``) where one exists.
"""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type): what a one-line error can quote."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class HubkitError(Exception):
    """Base of every error a user is meant to read."""

    exit_code = 1

    def __init__(self, message: str):
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ManifestError(HubkitError):
    """hubkit.yaml is unreadable, has an unknown key, a wrong type or a missing file."""


class DirectionError(HubkitError):
    """A direction file can't be read safely or its values are unusable (NaN, mixed d, ...)."""


class ArtifactError(HubkitError):
    """A ranking CSV, contrast JSONL or per-task result table is malformed."""


class ValidationFailed(HubkitError):
    """Validation found problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems[:3]))


class SecretFound(HubkitError):
    """A file about to be uploaded contains something that looks like a credential."""


class HubError(HubkitError):
    """The Hub refused or failed: auth, missing repo, permission, network, concurrent change."""


class ProvenanceError(HubkitError):
    """A base checkpoint does not match what the recipe recorded (hidden size, model type, revision)."""


class PlanError(HubkitError):
    """No tensor of a checkpoint matches the recipe, or a layer can't be represented."""


class PickleRefused(DirectionError):
    """A direction exists only as a pickle, which hubkit never loads from a download."""
