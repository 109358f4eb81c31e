"""The companion dataset: a run's contrast sets and per-task results as a Hub dataset.

Why a separate dataset repo: ``datasets.load_dataset(repo, name)`` is how people reuse prompts and per-task
outcomes, and the model repo's raw JSONL/CSV files are not loadable that way. Each source file becomes one
config (``contrast_<label>``, ``results_<arm>``) stored as Parquet and declared in the README's ``configs:``
block, so the ``datasets`` library never has to guess a builder from mixed file types. The files are
byte-deterministic for the same run, so a re-publish of an unchanged run commits nothing; the dataset gets
the same ``vN`` tag as the model, so ``load_dataset(..., revision="v2")`` matches model ``v2``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubkit import __version__
from hubkit.errors import HubkitError
from hubkit.formats.hashing import sha256_bytes
from hubkit.formats.hubjson import CARD, HUBKIT_JSON, FileRecord, HubJson
from hubkit.publish.repo_tree import Package, PackageFile
from hubkit.run.kinds import kinds

if TYPE_CHECKING:
    from hubkit.hub import Hub, RemoteState
    from hubkit.publish.plan import DatasetPlanView
    from hubkit.run.run import Run

REPO_TYPE = "dataset"


@dataclass
class DatasetConfig:
    name: str
    source: str  # the run file it comes from
    what: str  # "contrast set 'refuse'" / "per-task results of arm 'abl' (terminal-bench-2)"
    rows: int
    columns: list[str]

    @property
    def path(self) -> str:
        return f"{self.name}/train.parquet"


@dataclass
class DatasetPlan:
    """Everything needed to publish the dataset, computed before anything is written."""

    repo_id: str
    state: RemoteState
    package: Package
    configs: list[DatasetConfig]
    view: DatasetPlanView
    private: bool = False
    notes: list[str] = field(default_factory=list)


def _config_name(prefix: str, name: str, taken: set[str]) -> str:
    base = f"{prefix}_{re.sub(r'[^A-Za-z0-9_-]+', '_', name).strip('_-') or 'data'}"
    out, i = base, 2
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


def _parquet(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)  # no timestamps in the file: same rows, same bytes
    return buf.getvalue()


def build_dataset(run: Run, *, model_repo: str | None) -> tuple[Package, list[DatasetConfig]]:
    """The dataset repo's files: one Parquet file per contrast set and per-task table, README, hubkit.json."""
    taken: set[str] = set()
    configs: list[DatasetConfig] = []
    files: dict[str, PackageFile] = {}

    def add(cfg_prefix: str, name: str, source: str, what: str, table: Any) -> None:
        cfg = DatasetConfig(_config_name(cfg_prefix, name, taken), source, what, table.num_rows,
                            list(table.column_names))
        data = _parquet(table)
        files[cfg.path] = PackageFile(cfg.path, len(data), sha256_bytes(data), "data", data=data)
        configs.append(cfg)

    for kind in kinds():
        for table in kind.dataset_tables(run):
            add(table.prefix, table.name, table.source, table.what, table.rows())
    if not configs:
        raise HubkitError("--dataset-repo: the run has no contrast sets and no per-task result tables to publish")

    readme = render_readme(run, configs, model_repo).encode("utf-8")
    files[CARD] = PackageFile(CARD, len(readme), sha256_bytes(readme), "card", data=readme)
    listed = sorted(files.values(), key=lambda f: f.path)
    meta = HubJson(kind="dataset", hubkit_version=__version__, model_repo=model_repo,
                   configs=[{"name": c.name, "path": c.path, "source": c.source, "rows": c.rows,
                             "columns": c.columns} for c in configs])
    meta.set_files([FileRecord(f.path, f.size, f.sha256, f.kind) for f in listed])
    blob = meta.to_bytes()
    files[HUBKIT_JSON] = PackageFile(HUBKIT_JSON, len(blob), sha256_bytes(blob), "metadata", data=blob)
    return Package(files=sorted(files.values(), key=lambda f: f.path), meta=meta), configs


def render_readme(run: Run, configs: list[DatasetConfig], model_repo: str | None) -> str:
    """A dataset card whose ``configs:`` block is what ``load_dataset`` reads; no version or date in it,
    so an unchanged run gives an unchanged card."""
    import yaml

    m = run.manifest
    front: dict[str, Any] = {}
    if m.license:
        front["license"] = m.license
    front["pretty_name"] = f"{m.title} (data)"
    front["tags"] = sorted(set(m.tags) | {"hubkit"})
    front["configs"] = [
        {"config_name": c.name, "data_files": [{"split": "train", "path": c.path}], **({"default": True} if i == 0
                                                                                          else {})}
        for i, c in enumerate(configs)
    ]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip("\n"), "---", "",
             f"# {m.title} — data", ""]
    if model_repo:
        lines += [f"The contrast prompts and per-task results behind [{model_repo}](https://huggingface.co/"
                  f"{model_repo}). Versions are tagged like the model's (`v1`, `v2`, ...).", ""]
    lines += ["| config | rows | columns | what | source file |", "|---|---:|---|---|---|"]
    for c in configs:
        lines.append(f"| `{c.name}` | {c.rows} | {', '.join(c.columns)} | {c.what} | `{c.source}` |")
    first = configs[0].name
    lines += ["", "```python", "from datasets import load_dataset", "",
              f"ds = load_dataset(\"<this repo>\", \"{first}\", split=\"train\")", "```", ""]
    return "\n".join(lines)


def plan_dataset(hub: Hub, run: Run, repo_id: str, *, model_repo: str | None, private: bool = False) -> DatasetPlan:
    """Read the dataset repo and diff it against the files the run gives (nothing is written)."""
    from hubkit.publish.plan import DatasetPlanView, diff_package

    package, configs = build_dataset(run, model_repo=model_repo)
    state = hub.read_state(repo_id, repo_type=REPO_TYPE)
    adds, changes, deletes, _ = diff_package(package, state)
    view = DatasetPlanView(repo_id, [c.name for c in configs], adds, changes, deletes, create_repo=not state.exists)
    return DatasetPlan(repo_id, state, package, configs, view, private, notes=list(state.notes))


def execute_dataset(hub: Hub, plan: DatasetPlan, version: str | None, *, create_pr: bool = False) -> str | None:
    """Commit the dataset when it changed (before the model, so the card's link resolves); returns the
    commit that holds it. With ``create_pr`` the dataset change is a pull request too, like the model's."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    state = plan.state
    if plan.view.nothing_changed:
        return state.head
    if not state.exists:
        hub.create_for_first_publish(plan.repo_id, private=plan.private, repo_type=REPO_TYPE)
        state = plan.state = hub.read_state(plan.repo_id, repo_type=REPO_TYPE)
    ops: list[Any] = []
    for f in plan.view.adds + plan.view.changes:
        pf = plan.package.file(f.path)
        assert pf is not None and pf.data is not None
        ops.append(CommitOperationAdd(f.path, pf.data))
    ops += [CommitOperationDelete(f.path, is_folder=False) for f in plan.view.deletes]
    marker = plan.package.file(HUBKIT_JSON)
    commit, _ = hub.commit(plan.repo_id, ops, message=f"hubkit: data for {version or 'the model'}",
                           parent=state.head, branch="main", repo_type=REPO_TYPE, create_pr=create_pr,
                           marker_sha256=marker.sha256 if marker else None)
    return commit


def tag_dataset(hub: Hub, plan: DatasetPlan, version: str, commit: str | None) -> None:
    """Tag the dataset like the model, once the model's tag exists (a failed model publish tags nothing)."""
    if commit and version not in plan.state.tags:
        hub.tag(plan.repo_id, version, commit, repo_type=REPO_TYPE, message=f"data as of model {version}")
