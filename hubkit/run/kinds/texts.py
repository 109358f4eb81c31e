"""``summary_file:`` and ``sections[].file``: the run's own prose, rendered into the card."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubkit.run.kinds.base import ArtifactKind, LoadContext, Named, register

if TYPE_CHECKING:
    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run

MAX_TEXT_BYTES = 4 * 1024 * 1024  # a card section; a larger "text" is not prose


@register
class Texts(ArtifactKind):
    name = "texts"
    section = "sections"

    def named(self, m: Manifest) -> list[Named]:
        out = [Named(m.summary_file, "summary_file", "report")] if m.summary_file else []
        return out + [Named(s.file, f"sections[{i}].file", "report") for i, s in enumerate(m.sections) if s.file]

    def load(self, ctx: LoadContext) -> None:
        from hubkit.run.model import Section

        run, m = ctx.run, ctx.run.manifest
        if m.summary_file:
            run.summary = self._read(ctx, Named(m.summary_file, "summary_file", "report"))
        else:
            run.summary = m.summary
        for i, s in enumerate(m.sections):
            if s.file:
                text = self._read(ctx, Named(s.file, f"sections[{i}].file", "report"))
                if text is not None:
                    run.sections.append(Section(s.title, text.strip(), s.file))
            else:
                run.sections.append(Section(s.title, (s.text or "").strip()))

    @staticmethod
    def _read(ctx: LoadContext, named: Named) -> str | None:
        p = ctx.file(named)
        if p is None:
            return None
        if p.stat().st_size > MAX_TEXT_BYTES:
            ctx.problems.append(f"{ctx.where}: {named.key}: '{named.path}' is over 4 MB; not card text")
            return None
        try:
            return p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            ctx.problems.append(f"{named.path}: not UTF-8 text (byte {e.start}) ({ctx.where}: {named.key})")
            return None

    def describe(self, run: Run) -> dict[str, str]:
        m = run.manifest
        out = {m.summary_file: "report (its text is the summary above)"} if m.summary_file else {}
        out.update({s.file: f"the section “{s.title}” above" for s in m.sections if s.file})
        return out
