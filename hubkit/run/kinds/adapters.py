"""``adapters:``: PEFT adapter folders, checked against the run's base model (seed 004's failure: an adapter
whose ``base_model_name_or_path`` was not the base the plan claimed) and described from their own files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubkit.run.kinds.base import ArtifactKind, LoadContext, Named, register

if TYPE_CHECKING:
    from hubkit.run.manifest import Manifest
    from hubkit.run.model import Run


@register
class Adapters(ArtifactKind):
    name = "adapters"
    section = "adapters"

    def named(self, m: Manifest) -> list[Named]:
        return [Named(a.path, f"adapters[{i}].path", "adapter") for i, a in enumerate(m.adapters)]

    def load(self, ctx: LoadContext) -> None:
        from hubkit.formats.peft_adapters import read_adapter

        m = ctx.run.manifest
        for i, a in enumerate(m.adapters):
            declared = a.base_model or m.base_model
            if not declared:
                ctx.problems.append(f"{ctx.where}: adapters[{i}].base_model: required when the run has no base_model")
                continue
            p = ctx.folder_or_file(Named(a.path, f"adapters[{i}].path", "adapter"), folder=True)
            if p is not None and (info := ctx.attempt(read_adapter, p, declared, a.path, name=a.name)) is not None:
                ctx.run.adapters.append(info)

    def describe(self, run: Run) -> dict[str, str]:
        out = {}
        for a in run.adapters:
            for f in a.files:
                out[f"{a.path.rstrip('/')}/{f.path.rsplit('/', 1)[-1]}"] = (
                    f"adapter `{a.name}` (LoRA r={a.r}, on {a.base_model}): load with PeftModel.from_pretrained"
                    f"(base, repo, subfolder=\"{a.path}\")")
        return out

    def records(self, run: Run) -> dict[str, Any]:
        return {"adapters": [a.to_json() for a in run.adapters]} if run.adapters else {}
