"""The secret scan that runs before anything leaves the machine.

Research runs carry logs, shell scripts, notebooks and traces; a pasted ``HF_TOKEN=hf_...`` in
``notes/run.log`` is the classic leak. Every text file that a publish would upload is scanned line by line
(streamed, so a large JSONL costs no memory) for credential shapes; binary files (safetensors, pickles,
archives) are skipped, since their bytes are not where people paste keys. A hit stops the publish with
``file:line``, the kind of secret and the value masked (``hf_ab…wxyz``): enough to find it, not enough to
leak it again in a CI log. A file the manifest lists under ``allow_secrets`` is not scanned (the author has
looked at it: test fixtures, documentation of the key format).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hubkit.errors import SecretFound

# (kind, pattern): the value is group 0. Ordered so the more specific shape wins on the same text
# (an Anthropic ``sk-ant-`` key must not also be reported as an OpenAI ``sk-`` key).
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("private key block", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    ("Hugging Face token", re.compile(r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}(?![A-Za-z0-9])")),
    ("Hugging Face token", re.compile(r"(?<![A-Za-z0-9_])api_org_[A-Za-z0-9]{30,}(?![A-Za-z0-9])")),
    ("Anthropic API key", re.compile(r"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,}")),
    ("OpenAI API key", re.compile(r"(?<![A-Za-z0-9_-])sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),
    ("AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("AWS secret access key", re.compile(
        r"(?i:aws_?secret_?(?:access_?)?key)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])")),
    ("GitHub token", re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,}(?![A-Za-z0-9])")),
    ("GitHub token", re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,}")),
]

# Every pattern above contains one of these literal markers: a line without any of them is skipped after one
# cheap search instead of nine (a 1 MB single-line tokenizer.json costs one pass, not nine).
_MARKERS = re.compile(r"hf_|api_org_|sk-|AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|PRIVATE KEY|(?i:secret)")

LINE_LIMIT = 1 << 20  # a line longer than this is scanned in pieces (with an overlap), never read whole
_OVERLAP = 512
_BINARY_SAMPLE = 8192


@dataclass(frozen=True)
class SecretHit:
    """One credential-shaped value: where (``path:line``), what kind, and the value masked."""

    path: str
    line: int
    kind: str
    masked: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} {self.masked}"


def mask(value: str) -> str:
    """``hf_abcdef…wxyz`` → ``hf_ab…wxyz``: the prefix says what it is, the tail lets the owner find it."""
    if value.startswith("-----BEGIN"):
        return value  # the header line is not the secret; the key body under it is never shown
    if len(value) <= 12:
        return value[:3] + "…"
    prefix = re.match(r"(sk-ant-|sk-proj-|sk-svcacct-|sk-admin-|github_pat_|api_org_)?", value).group(0)  # type: ignore[union-attr]
    return f"{value[:max(5, len(prefix) + 2)]}…{value[-4:]}"


def _placeholder(value: str) -> bool:
    """``hf_xxxxxxxx…``, ``sk-XXXX…``, ``AKIAEXAMPLE…``: documentation shapes, not credentials.

    A real token body is random: a handful of distinct characters means a placeholder.
    """
    body = re.sub(r"^(hf_|api_org_|sk-ant-|sk-proj-|sk-svcacct-|sk-admin-|sk-|gh[pousr]_|github_pat_|"
                  r"AKIA|ASIA|ABIA|ACCA)", "", value)
    if "EXAMPLE" in value.upper():
        return True
    return len(set(body.lower())) < 6


def scan_text(text: str, path: str = "<text>", first_line: int = 1) -> list[SecretHit]:
    """Every credential-shaped value in ``text`` (pure: no file access), one hit per value and line."""
    hits: list[SecretHit] = []
    for offset, line in enumerate(text.splitlines()):
        hits.extend(_scan_line(line, path, first_line + offset))
    return hits


def _scan_line(line: str, path: str, lineno: int) -> Iterator[SecretHit]:
    if _MARKERS.search(line) is None:
        return
    seen: list[tuple[int, int]] = []
    for kind, pattern in PATTERNS:
        for m in pattern.finditer(line):
            group = 1 if pattern.groups else 0
            value = m.group(group)
            start, end = m.span(group)
            if any(s < end and start < e for s, e in seen):
                continue  # already reported under a more specific kind
            if kind != "private key block" and _placeholder(value):
                continue
            seen.append((start, end))
            yield SecretHit(path, lineno, kind, mask(value))


def is_binary(path: Path) -> bool:
    """A NUL byte in the first 8 KB: safetensors, pickles, npz, png. UTF-16 text is rare in runs."""
    with open(path, "rb") as fh:
        return b"\0" in fh.read(_BINARY_SAMPLE)


def scan_file(path: Path, display: str | None = None) -> list[SecretHit]:
    """Scan one file line by line; binary files give no hits. Memory is bounded by ``LINE_LIMIT``."""
    display = display or str(path)
    if is_binary(path):
        return []
    hits: list[SecretHit] = []
    seen: set[tuple[int, str, str]] = set()
    lineno, carry = 1, ""
    with open(path, "rb") as fh:
        while True:
            raw = fh.readline(LINE_LIMIT)
            if not raw:
                break
            piece = raw.decode("utf-8", errors="replace")
            complete = piece.endswith("\n")
            for hit in _scan_line(carry + piece.rstrip("\r\n"), display, lineno):
                key = (hit.line, hit.kind, hit.masked)
                if key not in seen:  # the overlap may show the same value twice
                    seen.add(key)
                    hits.append(hit)
            if complete:
                lineno, carry = lineno + 1, ""
            else:
                carry = piece[-_OVERLAP:]  # a value cut by the piece boundary is seen whole next time
    return hits


def scan_files(root: Path, paths: Iterable[str], allow: Iterable[str] = ()) -> list[SecretHit]:
    """Scan ``root/<path>`` for each path (POSIX, relative) unless it matches an ``allow`` pattern."""
    from hubkit.run.run import matches

    allow = list(allow)
    hits: list[SecretHit] = []
    for rel in paths:
        if allow and matches(rel, allow):
            continue
        hits.extend(scan_file(root / rel, rel))
    return hits


def check_secrets(root: Path, paths: Iterable[str], allow: Iterable[str] = ()) -> None:
    """Raise :class:`SecretFound` naming every hit (the first three in the message) when any file leaks."""
    hits = scan_files(root, paths, allow)
    if hits:
        raise secret_error(hits)


def secret_error(hits: list[SecretHit]) -> SecretFound:
    shown = "; ".join(str(h) for h in hits[:3])
    more = f" (and {len(hits) - 3} more)" if len(hits) > 3 else ""
    err = SecretFound(f"{shown}{more} — nothing was uploaded; remove the secret (and revoke it), or list the "
                      f"file under allow_secrets in hubkit.yaml if it is not a real credential")
    err.hits = hits  # type: ignore[attr-defined]
    return err
