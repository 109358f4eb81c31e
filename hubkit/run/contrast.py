"""Contrast-prompt JSONL files: one JSON object per line, the prompt under a text-like key."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hubkit.errors import ArtifactError

TEXT_KEYS = ("prompt", "text", "instruction", "question", "input", "content", "messages")


@dataclass
class ContrastSet:
    file: str
    label: str
    prompts: list[str]
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, line of first occurrence)

    @property
    def count(self) -> int:
        return len(self.prompts)

    def examples(self, k: int = 3) -> list[str]:
        return self.prompts[:k]


def _text_of(obj: dict) -> str | None:
    for key in TEXT_KEYS:
        v = obj.get(key)
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):  # chat messages
            return "\n".join(str(m.get("content", "")) for m in v)
    strings = [v for v in obj.values() if isinstance(v, str)]
    return strings[0] if strings else None


def read_contrast(path: Path, display: str, label: str) -> ContrastSet:
    if not path.is_file():
        raise ArtifactError(f"{display}: file not found")
    prompts: list[str] = []
    first_seen: dict[str, int] = {}
    dups: list[tuple[int, int]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{display}: not UTF-8 text (byte {e.start})") from e
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{display}:{i}: not valid JSON ({e.msg} at column {e.colno})") from e
        except (ValueError, RecursionError) as e:
            raise ArtifactError(f"{display}:{i}: not valid JSON ({type(e).__name__})") from e
        if not isinstance(obj, dict):
            raise ArtifactError(f"{display}:{i}: expected a JSON object, got {type(obj).__name__}")
        text = _text_of(obj)
        if text is None:
            raise ArtifactError(f"{display}:{i}: no prompt text (looked for {', '.join(TEXT_KEYS[:4])}, ...)")
        if text in first_seen:
            dups.append((i, first_seen[text]))
        else:
            first_seen[text] = i
        prompts.append(text)
    if not prompts:
        raise ArtifactError(f"{display}: no prompts (empty file)")
    return ContrastSet(file=display, label=label, prompts=prompts, duplicates=dups)
