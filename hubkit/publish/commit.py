"""The publish pipeline: run dir → Run → Package → staged tree (``--out``) or one Hub commit + a ``vN`` tag.

Order matters and is the point of this module:

1. read the manifest and secret-scan every file the inventory would publish: nothing has touched the
   network yet, and no tensor is loaded;
2. read the repo (head, tags, tree, previous ``hubkit.json``): still nothing written;
3. decide whether anything changed. The card and ``hubkit.json`` carry the version history, so they differ
   on every publish by construction; "unchanged" is decided on the run's content instead: its files with
   their sha256 (minus those two) and the manifest-derived metadata, against the previous ``hubkit.json``
   on the Hub, plus a check that the tree still holds all of it. A fast path proves this from cached
   hashes alone (no torch import, no card rendering); when it can't, the full build decides;
4. otherwise compute the one-line change summary against the previous ``hubkit.json``, rebuild with the
   new version and history, diff against the tree (a file whose sha256 equals the remote LFS oid is
   neither uploaded nor put in the commit) and make one commit on top of the head that was read, then
   tag it ``vN``.

A dry run stops after step 4's plan. Every failure before the commit leaves the repo as it was.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubkit import __version__
from hubkit.errors import HubError, HubkitError
from hubkit.formats.hashing import HashCache, sha256_bytes
from hubkit.formats.hubjson import CARD, HUBKIT_JSON, HistoryEntry, HubJson
from hubkit.hub import VERSION_RE, Hub, RemoteState
from hubkit.publish.plan import FileChange, PublishPlan, diff_package, git_blob_sha1
from hubkit.publish.related import cross_run_geometry
from hubkit.publish.repo_tree import Package, PackageFile, build_package, stage
from hubkit.publish.secrets import check_generated, check_secrets
from hubkit.run.manifest import Manifest, is_repo_id, load_manifest
from hubkit.run.run import inventory, load_run, manifest_roles

__all__ = ["PublishPlan", "PublishResult", "publish", "stage_run", "change_summary"]

VOLATILE_FILES = (CARD, HUBKIT_JSON)  # they carry the version history: different on every publish
VOLATILE_META = ("version", "history", "files", "owned", "hubkit_version")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def stage_run(run_dir: str | Path, out: str | Path, *, template_dir: str | Path | None = None,
              with_weights: bool = False) -> Package:
    """Validate the run and write exactly the tree a publish would commit; no network, no token."""
    _check_out_apart(Path(run_dir), Path(out))
    run = load_run(run_dir, with_weights=with_weights)
    check_secrets(run.root, [f.path for f in run.included_files], run.manifest.allow_secrets)
    package = build_package(run, template_dir=template_dir)
    check_generated(package.generated(), run.manifest.allow_secrets)
    stage(package, out)
    return package


def _check_out_apart(run_dir: Path, out: Path) -> None:
    """``--out`` replaces the folder it names: never the run itself, a folder inside it (the next publish would
    ship the staged tree as run content) or a folder holding it."""
    run, dest = run_dir.resolve(), out.resolve()
    if dest == run or dest.is_relative_to(run) or run.is_relative_to(dest):
        raise HubkitError(f"--out {out}: is the run {run_dir}, inside it or holding it; stage it elsewhere")


@dataclass
class PublishResult:
    repo_id: str
    version: str  # the version created, or the current one when nothing changed
    commit: str | None  # the new commit (or the current head when nothing changed)
    url: str
    plan: PublishPlan
    nothing_changed: bool = False
    dry_run: bool = False
    tagged: bool = False
    pr_url: str | None = None
    dataset_repo: str | None = None
    dataset_commit: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def uploaded_bytes(self) -> int:
        """Bytes of the files the commit carried (an upper bound: the LFS API skips what is already there)."""
        return 0 if self.nothing_changed or self.dry_run else self.plan.upload_bytes


def publish(
    run_dir: str | Path,
    *,
    repo_id: str | None = None,
    private: bool = False,
    revision: str | None = None,
    version: str | None = None,
    message: str | None = None,
    dry_run: bool = False,
    with_weights: bool = False,
    create_pr: bool = False,
    dataset_repo: str | None = None,
    template_dir: str | Path | None = None,
    progress: bool = True,
    record_regeneration: str | Path | None = None,
    hub: Hub | None = None,
) -> PublishResult:
    """Publish a run as one commit + a ``vN`` tag (see the module docstring for the order of steps).

    ``repo_id`` falls back to the manifest's; the endpoint and token are huggingface_hub's own settings.
    ``record_regeneration`` is a base checkpoint folder whose shard sha256s go into the recipe.
    """
    manifest = load_manifest(run_dir)
    message = (message or "").strip().splitlines()[0].strip() if (message or "").strip() else None
    repo_id = repo_id or manifest.repo_id
    if not repo_id:
        raise HubkitError("no repo id: pass --repo-id OWNER/NAME or set repo_id in hubkit.yaml")
    for rid in (repo_id, dataset_repo):
        if rid and not is_repo_id(rid):
            raise HubkitError(f"repo id '{rid}' must look like owner/name")
    if version is not None and not VERSION_RE.match(version):
        raise HubkitError(f"--version must look like v3, got '{version}'")
    if dataset_repo and dataset_repo == repo_id:
        raise HubkitError("--dataset-repo must differ from the model repo id")

    # The secret scan runs on the file list alone (no tensors loaded) and before any network call.
    root = Path(run_dir)
    roles = manifest_roles(manifest)
    scanned = _scan(root, manifest, roles, with_weights=with_weights, done=set())

    hub = hub or Hub()
    branch = revision or "main"
    state = hub.read_state(repo_id, branch=branch)
    notes = list(state.notes)

    if not with_weights and _had_weights(state) and manifest.weights is not None:
        # weights once published stay published: forgetting --with-weights must not delete 8 GB
        with_weights = True
        scanned = _scan(root, manifest, roles, with_weights=True, done=scanned)
        notes.append(f"weights were published before ({state.previous_version}); keeping them published "
                     f"(changed shards are uploaded, unchanged ones are not)")
    if dataset_repo is None and state.meta is not None and state.meta.dataset_repo:
        dataset_repo = state.meta.dataset_repo
        notes.append(f"companion dataset {dataset_repo} (as in {state.previous_version})")

    if not (dataset_repo or record_regeneration) and _fast_unchanged(
            root, manifest, roles, state, with_weights=with_weights, repo_id=repo_id, progress=progress):
        assert state.meta is not None
        prev_files = [FileChange(f.path, f.size, f.kind) for f in state.meta.files]
        return _nothing_changed(hub, prev_files, state.readme or "", state, None, notes, branch=branch,
                                private=private, create_pr=create_pr, dry_run=dry_run)

    run = load_run(run_dir, with_weights=with_weights)
    check_secrets(run.root, [f.path for f in run.included_files if f.path not in scanned],
                  run.manifest.allow_secrets)

    shards, base_type = None, None
    if record_regeneration:
        from hubkit.weights.regenerate import record_regeneration as record

        shards = record(run, record_regeneration, progress=progress)
        base_type = _model_type(Path(record_regeneration))
    cache = HashCache()
    common: dict[str, Any] = dict(template_dir=template_dir, shards_sha256=shards, base_model_type=base_type,
                                  repo_id=repo_id, dataset_repo=dataset_repo, hash_cache=cache,
                                  cross_run=cross_run_geometry(run))  # read once, though the package is built twice
    current = state.previous_version or version or state.next_version()
    package = build_package(run, version=current, history=state.history, progress=progress, **common)
    _merge_card(package, state, notes)
    dplan = None
    if dataset_repo:
        from hubkit.publish.dataset import plan_dataset

        dplan = plan_dataset(hub, run, dataset_repo, model_repo=repo_id, private=private)
        notes += dplan.notes

    if _unchanged(package, state):
        unchanged = [FileChange(f.path, f.size, f.kind) for f in package.files]
        return _nothing_changed(hub, unchanged, _card_text(package), state, dplan, notes, branch=branch,
                                private=private, create_pr=create_pr, dry_run=dry_run)

    new_version = version or state.next_version()
    if version is not None and (version in state.tags or version == state.previous_version):
        where = state.tags.get(version) or state.head or ""
        raise HubkitError(f"--version {version} already exists in {repo_id} (at {where[:12]}); "
                          f"the next free version is {state.next_version()}")
    summary = change_summary(package, state.meta, restored=_restored(package, state))
    if message:
        summary = f"{message} ({summary})"
    today = _dt.datetime.now(_dt.UTC).date().isoformat()
    history = [h for h in state.history if h.version != new_version]
    history.append(HistoryEntry(new_version, today, summary))
    package = build_package(run, version=new_version, history=history, progress=False, **common)
    _merge_card(package, state, notes)
    notes += [n for n in package.notes if n.startswith(f"{CARD}: ")]  # the run's own README, kept aside
    check_generated(package.generated() + (dplan.package.generated() if dplan else []),
                    run.manifest.allow_secrets)  # before anything leaves: the card quotes the run

    adds, changes, deletes, unchanged = diff_package(package, state)
    plan = PublishPlan(
        repo_id=repo_id, repo_type="model", branch=branch, version=new_version, parent=state.head,
        create_repo=not state.exists, create_branch=not state.branch_exists and branch != "main",
        create_pr=create_pr, private=private, adds=adds, changes=changes, deletes=deletes, unchanged=unchanged,
        summary=summary, card=_card_text(package), notes=notes, dataset=dplan.view if dplan else None,
    )
    result = PublishResult(repo_id, new_version, None, hub.url(repo_id), plan, dry_run=dry_run,
                           dataset_repo=dataset_repo, notes=notes)
    if dry_run:
        return result

    with _progress_bars(progress):
        parent = state.head
        if not state.exists:
            parent = hub.create_for_first_publish(repo_id, private=private)
        if not state.branch_exists and branch != "main":
            hub.ensure_branch(repo_id, branch, start=parent)
        if dplan is not None:
            from hubkit.publish.dataset import execute_dataset

            result.dataset_commit = execute_dataset(hub, dplan, new_version, create_pr=create_pr)
        missing = state.missing_tag()
        if missing and not create_pr and state.head:
            hub.tag(repo_id, missing, state.head, message=f"hubkit {missing} (tag restored)")
            notes.append(f"tagged {missing} at {state.head[:12]} (its tag was missing)")
        ops = _operations(package, plan)
        marker = package.file(HUBKIT_JSON)
        commit, pr_url = hub.commit(
            repo_id, ops, message=message or f"hubkit publish {new_version}",
            description=f"{new_version}: {summary}", parent=parent, branch=branch, create_pr=create_pr,
            marker_sha256=marker.sha256 if marker else None,
        )
    result.commit, result.pr_url = commit, pr_url
    if create_pr:
        notes.append(f"opened {pr_url}; after it is merged, run hubkit publish again to tag {new_version}")
        return result
    try:
        hub.tag(repo_id, new_version, commit, message=f"hubkit {new_version}: {summary}")
        if dplan is not None:
            from hubkit.publish.dataset import tag_dataset

            tag_dataset(hub, dplan, new_version, result.dataset_commit)
    except HubError as e:
        raise HubError(f"committed {commit[:12]} but could not tag {new_version} ({e}); re-run hubkit "
                       f"publish to add the tag") from e
    result.tagged = True
    result.url = f"{hub.url(repo_id)}/tree/{new_version}"
    return result


# --------------------------------------------------------------------------- deciding


def _model_type(base_dir: Path) -> str | None:
    """The base checkpoint's model_type, recorded so regenerate can refuse another architecture."""
    try:
        value = json.loads((base_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _had_weights(state: RemoteState) -> bool:
    files = state.meta.files if state.meta is not None else []
    return any(f.kind == "weights" and f.path in state.files for f in files)


def _meta_key(meta: HubJson) -> Any:
    """The manifest-derived part of hubkit.json, normalized through JSON (tuples vs lists, ...)."""
    return json.loads(json.dumps({k: v for k, v in meta.to_dict().items() if k not in VOLATILE_META},
                                 sort_keys=True))


def _unchanged(package: Package, state: RemoteState) -> bool:
    """Same run content as the previous hubkit.json describes, and the tree still holds all of it."""
    if state.meta is None or not state.branch_exists:
        return False
    if any(p not in state.files for p in VOLATILE_FILES):
        return False
    prev: dict[str, str] = state.meta.sha256s()
    new = {f.path: f.sha256 for f in package.files}
    for p in VOLATILE_FILES:
        prev.pop(p, None)
        new.pop(p, None)
    if prev != new or _meta_key(package.meta) != _meta_key(state.meta):
        return False
    adds, changes, deletes, _ = diff_package(package, state)
    return not deletes and all(c.path in VOLATILE_FILES for c in adds + changes)


def _scan(root: Path, m: Manifest, roles: dict[str, str], *, with_weights: bool, done: set[str]) -> set[str]:
    """Secret-scan every file the inventory would publish that was not scanned yet; returns all scanned."""
    paths = [e.path for e in inventory(root, m, roles, with_weights=with_weights)
             if e.included and e.path not in done]
    check_secrets(root, paths, m.allow_secrets)
    return done | set(paths)


def _fast_unchanged(root: Path, m: Manifest, roles: dict[str, str], state: RemoteState, *, with_weights: bool,
                    repo_id: str, progress: bool = False) -> bool:
    """Prove "nothing changed" from file hashes alone, without loading tensors or rendering the card.

    Everything hubkit generates (canonical vectors, plots, card, hubkit.json) is a pure function of the
    run's published files for a given hubkit version, so if those files hash as the previous hubkit.json
    says and the tree still holds every listed file, a full build would find nothing to commit. Any
    doubt (another hubkit version, a recorded regeneration, a generated file we can't check) returns
    False and the full path decides; this only makes the common re-publish cheap (no torch import).
    """

    meta = state.meta
    if (meta is None or not state.branch_exists or meta.hubkit_version != __version__
            or meta.repo_id != repo_id or meta.dataset_repo
            or (meta.regenerate is not None and meta.regenerate.shards_sha256)):
        return False
    listed = {f.path: f for f in meta.files}
    if any(p not in state.files for p in VOLATILE_FILES) or CARD not in listed:
        return False  # (hubkit.json never lists itself)
    generated = {d.canonical for d in meta.directions}
    generated |= {p for p, f in listed.items() if f.kind in ("asset", "card", "metadata")}
    run_files = {p: f for p, f in listed.items() if p not in generated}
    entries = [e for e in inventory(root, m, roles, with_weights=with_weights)
               if e.included and e.path not in generated]
    if {e.path for e in entries} != set(run_files):
        return False
    cache = HashCache()
    with cache.batch(sum(e.size for e in entries), progress) as bar:
        for e in entries:
            if e.size != run_files[e.path].size or cache.sha256(root / e.path, bar) != run_files[e.path].sha256:
                return False
    for path, f in listed.items():
        remote = state.files.get(path)
        if remote is None:
            return False
        if path in VOLATILE_FILES:
            continue  # present is enough: they carry the history (as in the full path)
        if remote.sha256 is not None:
            if remote.sha256 != f.sha256:
                return False
        elif path not in run_files:
            return False  # a generated file stored as a regular git blob: let the full build compare it
        else:
            pf = PackageFile(path, f.size, f.sha256, "", source=root / path)
            if remote.blob_id != git_blob_sha1(pf):
                return False
    owned_left = {p for p in state.owned if p in state.files and p not in listed
                  and p not in (HUBKIT_JSON, ".gitattributes")}
    return not owned_left


def _restored(package: Package, state: RemoteState) -> list[str]:
    """Files the previous hubkit.json lists with the same sha256 but that the tree lost or altered."""
    prev = state.meta.sha256s() if state.meta is not None else {}
    adds, changes, _, _ = diff_package(package, state)
    return sorted(c.path for c in adds + changes
                  if c.path not in VOLATILE_FILES and (pf := package.file(c.path)) and prev.get(c.path) == pf.sha256)


def change_summary(package: Package, prev_meta: HubJson | None, restored: list[str] = ()) -> str:  # type: ignore[assignment]
    """One line: files added / changed / removed since the previous hubkit.json, files restored that the
    tree lost, and metadata changes."""
    new = {f.path: f.sha256 for f in package.files if f.path not in VOLATILE_FILES}
    if not prev_meta:
        return f"first publish: {len(new)} files"
    prev = {p: h for p, h in prev_meta.sha256s().items() if p not in VOLATILE_FILES}
    added = sorted(p for p in new if p not in prev)
    changed = sorted(p for p in new if p in prev and prev[p] != new[p])
    removed = sorted(str(p) for p in prev if p not in new)
    parts = [f"{verb} {_paths(items)}" for verb, items in (("added", added), ("changed", changed),
                                                             ("removed", removed), ("restored", list(restored)))
             if items]
    old_key, new_key = _meta_key(prev_meta), _meta_key(package.meta)
    keys = sorted(k for k in set(old_key) | set(new_key) if old_key.get(k) != new_key.get(k))
    keys = [k for k in keys if not (k == "run" and "hubkit.yaml" in changed)]
    if keys:
        parts.append(f"updated {', '.join(keys)}")
    return "; ".join(parts) or "card and metadata refreshed"


def _paths(items: list[str]) -> str:
    if len(items) <= 3:
        return ", ".join(items)
    return f"{len(items)} files ({', '.join(items[:2])}, …)"


def _nothing_changed(hub: Hub, unchanged: list[FileChange], card: str, state: RemoteState, dplan: Any,
                     notes: list[str], *, branch: str, private: bool, create_pr: bool,
                     dry_run: bool) -> PublishResult:
    current = state.previous_version or "the head"
    tag_missing = None if create_pr else state.missing_tag()
    plan = PublishPlan(repo_id=state.repo_id, repo_type="model", branch=branch, version=current,
                       parent=state.head, create_repo=False, create_branch=False, create_pr=create_pr,
                       private=private, unchanged=unchanged, card=card, nothing_changed=True, current_version=current,
                       tag_missing=tag_missing, notes=notes, dataset=dplan.view if dplan else None)
    result = PublishResult(state.repo_id, current, state.head, hub.url(state.repo_id), plan, nothing_changed=True,
                           dry_run=dry_run, dataset_repo=dplan.repo_id if dplan else None, notes=notes)
    if dry_run:
        return result
    if dplan is not None:
        from hubkit.publish.dataset import execute_dataset, tag_dataset

        result.dataset_commit = execute_dataset(hub, dplan, state.previous_version, create_pr=create_pr)
    if tag_missing and state.head:
        hub.tag(state.repo_id, tag_missing, state.head, message=f"hubkit {tag_missing}")
        result.tagged = True
    if dplan is not None and not create_pr and state.previous_version and VERSION_RE.match(current):
        tag_dataset(hub, dplan, current, result.dataset_commit)
        notes.append(f"tagged {tag_missing} at {state.head[:12]} (the commit was there, its tag was missing)")
    if state.tags.get(current) == state.head or result.tagged:
        result.url = f"{hub.url(state.repo_id)}/tree/{current}"
    return result


# --------------------------------------------------------------------------- the card and the commit


def _card_text(package: Package) -> str:
    card = package.file(CARD)
    return card.read().decode("utf-8", errors="replace") if card is not None else ""


def _split_front_matter(text: str) -> tuple[dict[str, Any] | None, str]:
    import yaml

    m = _FRONT_MATTER.match(text)
    if m is None:
        return {}, text
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return None, text[m.end():]
    return (data if isinstance(data, dict) else {}), text[m.end():]


def _merge_card(package: Package, state: RemoteState, notes: list[str]) -> None:
    """Keep front-matter keys that someone added to the README on the Hub (a ``pipeline_tag``, a
    ``model-index``): the new card wins on every key it sets, the rest of the old metadata stays.

    Done here rather than with ``metadata_update``, which replaces a README it can't parse with a
    template. A README that hubkit wrote and nobody edited is simply replaced.
    """
    import yaml

    if state.readme is None:
        return
    prev_files = state.meta.sha256s() if state.meta is not None else {}
    if prev_files.get(CARD) == sha256_bytes(state.readme.encode("utf-8")):
        return  # our own card, untouched since
    old, _ = _split_front_matter(state.readme)
    who = "edited on the Hub" if CARD in state.owned else "not written by hubkit"
    if old is None:
        notes.append(f"README.md on the Hub ({who}) has unreadable front matter; the new card replaces it")
        return
    new_text = _card_text(package)
    new, body = _split_front_matter(new_text)
    if new is None:
        return
    kept = [k for k in old if k not in new]
    if not kept:
        notes.append(f"README.md on the Hub was {who}; the new card replaces it")
        return
    merged = dict(new, **{k: old[k] for k in kept})
    text = "---\n" + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True) + "---\n" + body
    package.replace_file(CARD, text.encode("utf-8"))
    notes.append(f"README.md on the Hub was {who}; kept its front-matter key(s) {', '.join(map(str, kept))}")


def _operations(package: Package, plan: PublishPlan) -> list[Any]:
    """Commit operations for the files that differ; large files go by path (streamed by the client)
    with our cached sha256 set, so the client neither holds them in memory nor hashes them again."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    ops: list[Any] = []
    for change in plan.adds + plan.changes:
        pf = package.file(change.path)
        assert pf is not None
        if pf.data is not None:
            ops.append(CommitOperationAdd(pf.path, pf.data))
        else:
            op = CommitOperationAdd(pf.path, str(pf.source))
            op.upload_info.sha256 = bytes.fromhex(pf.sha256)
            ops.append(op)
    ops += [CommitOperationDelete(f.path, is_folder=False) for f in plan.deletes]
    return ops


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's upload bars follow ``progress`` (they are global: restore what was there)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()



# --------------------------------------------------------------------------- a regenerated model folder
