"""A regenerated model folder published as a model repo (``hubkit regenerate --push-to``): one commit
with the weights, their card and a ``hubkit.json`` of kind ``regenerated-weights``, then a ``vN`` tag."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubkit import __version__
from hubkit.errors import HubkitError
from hubkit.run.manifest import is_repo_id
from hubkit.weights.regenerate import RegenerateResult, regenerate

if TYPE_CHECKING:  # the publishing machinery is imported only to push: a plain rebuild starts its bytes sooner
    from hubkit.hub import Hub
    from hubkit.publish.commit import PublishResult


def regenerate_and_push(source: Any, *, push_to: str | None = None, progress: bool = True,
                        **kwargs: Any) -> RegenerateResult:
    """:func:`~hubkit.weights.regenerate.regenerate`, then (with ``push_to``) the folder published as a model
    repo; a bad repo id is refused before any work, not after the rebuild."""
    if push_to is not None and not is_repo_id(push_to):
        raise HubkitError(f"--push-to '{push_to}' must look like owner/name")
    res = regenerate(source, progress=progress, **kwargs)
    if push_to is None or res.out is None:
        return res
    from hubkit.formats.hubjson import CARD

    recipe, base, out = res.recipe, res.base, res.out
    origin = {
        "recipe": recipe.source,
        "recipe_revision": recipe.source_revision,
        "direction": recipe.direction_name,
        "layer": recipe.layer,
        "layer_convention": recipe.layer_convention,
        "base_model": base.repo_id or recipe.base_model,
        "base_model_revision": base.commit,
        "shards_sha256": res.shards_sha256,
    }
    pushed = push_model_folder(out, push_to, card=(out / CARD).read_text(encoding="utf-8"), source=origin,
                               progress=progress)
    res.notes.append(f"{push_to}: nothing changed; {pushed.version} is current" if pushed.nothing_changed
                     else f"pushed {pushed.version} to {pushed.url}")
    return res


def push_model_folder(
    folder: str | Path,
    repo_id: str,
    *,
    card: str | None = None,
    private: bool = False,
    message: str | None = None,
    source: dict[str, Any] | None = None,
    hub: Hub | None = None,
    progress: bool = True,
) -> PublishResult:
    """Publish a model folder (``hubkit regenerate --push-to``) the way a run is published.

    One commit with every file of the folder plus a small ``hubkit.json`` (files, sha256, what hubkit owns,
    version history, where the weights came from), on top of the head that was read, then a ``vN`` tag.
    Shards whose sha256 equals the remote LFS oid are not uploaded again; an unchanged folder makes no
    commit. The folder's own ``README.md`` (the regenerated-weights card) is its card.
    """
    from hubkit.formats.hashing import HashCache, sha256_bytes
    from hubkit.formats.hubjson import CARD, HUBKIT_JSON, FileRecord, HistoryEntry, HubJson
    from hubkit.hub import Hub
    from hubkit.publish.commit import PublishResult, _nothing_changed, _operations, _progress_bars
    from hubkit.publish.plan import FileChange, PublishPlan, diff_package
    from hubkit.publish.repo_tree import Package, PackageFile
    from hubkit.publish.secrets import check_secrets

    folder = Path(folder)
    if not is_repo_id(repo_id):
        raise HubkitError(f"repo id '{repo_id}' must look like owner/name")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise HubkitError(f"{folder}: not a model folder (no config.json)")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != HUBKIT_JSON)
    rels = [p.relative_to(folder).as_posix() for p in paths]
    check_secrets(folder, [r for r in rels if not r.endswith(".safetensors")])
    cache = HashCache()
    files = []
    with cache.batch(sum(p.stat().st_size for p in paths), progress) as bar:
        for p, rel in zip(paths, rels, strict=True):
            kind = "card" if rel == CARD else "weights" if rel.endswith((".safetensors", ".index.json")) else "config"
            files.append(PackageFile(rel, p.stat().st_size, cache.sha256(p, bar), kind, source=p))
    if card is not None and not any(f.path == CARD for f in files):
        data = card.encode("utf-8")
        files.append(PackageFile(CARD, len(data), sha256_bytes(data), "card", data=data))

    hub = hub or Hub()
    state = hub.read_state(repo_id)
    content = {f.path: f.sha256 for f in files}
    before = state.meta.sha256s() if state.meta is not None else {}
    unchanged = (state.meta is not None and before == content
                 and all(p in state.files for p in content) and HUBKIT_JSON in state.files)
    if unchanged:
        return _nothing_changed(hub, [FileChange(f.path, f.size, f.kind) for f in files], card or "", state,
                                None, list(state.notes), branch="main", private=private, create_pr=False,
                                dry_run=False)

    version = state.next_version()
    prev = state.meta
    changed = sum(1 for p, h in content.items() if p in before and before[p] != h)
    added = sum(1 for p in content if p not in before)
    removed = sum(1 for p in before if p not in content)
    summary = ", ".join(f"{n} file(s) {what}" for n, what in ((added, "added"), (changed, "changed"),
                                                             (removed, "removed")) if n) or "republished"
    if message:
        summary = f"{message} ({summary})"
    today = _dt.datetime.now(_dt.UTC).date().isoformat()
    meta = HubJson(kind="regenerated-weights", hubkit_version=__version__, version=version, repo_id=repo_id,
                   source=source or (prev.source if prev is not None else None),
                   history=[h for h in state.history if h.version != version]
                   + [HistoryEntry(version, today, summary)])
    meta.set_files([FileRecord(f.path, f.size, f.sha256, f.kind) for f in files])
    blob = meta.to_bytes()
    package = Package(files=sorted(files + [PackageFile(HUBKIT_JSON, len(blob), sha256_bytes(blob), "metadata",
                                                        data=blob)], key=lambda f: f.path), meta=meta)
    adds, changes, deletes, same = diff_package(package, state)
    plan = PublishPlan(repo_id=repo_id, repo_type="model", branch="main", version=version, parent=state.head,
                       create_repo=not state.exists, create_branch=False, create_pr=False, private=private,
                       adds=adds, changes=changes, deletes=deletes, unchanged=same, summary=summary,
                       card=card or "", notes=list(state.notes))
    result = PublishResult(repo_id, version, None, hub.url(repo_id), plan, notes=plan.notes)
    with _progress_bars(progress):
        parent = state.head
        if not state.exists:
            parent = hub.create_for_first_publish(repo_id, private=private)
        commit, _ = hub.commit(repo_id, _operations(package, plan), message=message or f"hubkit regenerate {version}",
                               description=f"{version}: {summary}", parent=parent, branch="main", create_pr=False,
                               marker_sha256=sha256_bytes(blob))
    result.commit = commit
    hub.tag(repo_id, version, commit, message=f"hubkit {version}: {summary}")
    result.tagged = True
    result.url = f"{hub.url(repo_id)}/tree/{version}"
    return result
