"""Rebuild abliterated weights from a published direction: recipe + base checkpoint → model folder.

``regenerate`` reads the recipe (``hubkit.json``: from a Hub repo at one resolved commit, a staged tree, or a
run folder's ``hubkit.yaml``), fetches the base checkpoint (safetensors, config, tokenizer and generation
config only), checks provenance before writing anything, streams the shards through
:mod:`hubkit.abliterate` into a temporary folder beside ``--out``, writes the weights card, and renames the
folder into place. The recorded shard sha256s (``publish --record-regeneration``) make the result verifiable:
"bit-identical to the published recipe", or the names of the shards that differ.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubkit import __version__
from hubkit.cards.weights_card import WeightsCardData, render_weights_card
from hubkit.errors import DirectionError, HubkitError, ProvenanceError
from hubkit.formats.atomic import staging_dir
from hubkit.formats.directions import to_block_index
from hubkit.formats.hubjson import HUBKIT_JSON
from hubkit.formats.recipe import RecipeSpec
from hubkit.formats.safetensors_io import INDEX_NAME, config_facts, read_config, read_index
from hubkit.formatting import layer_span
from hubkit.hub import Hub
from hubkit.run.manifest import is_repo_id
from hubkit.source import RepoSource
from hubkit.weights import recipes
from hubkit.weights.executor import ExecutionResult, TensorCheck, execute_plan
from hubkit.weights.plan import TensorPlan, build_plan
from hubkit.weights.recipes.base import Recipe, VectorLoader

if TYPE_CHECKING:
    from hubkit.run.run import Run

#: what is fetched of a base model and copied into the output (weights are rewritten, the rest copied)
BASE_PATTERNS = [
    "*.safetensors",
    INDEX_NAME,
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
    "tokenizer.model",
    "chat_template.*",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
]
_COPIED = [p for p in BASE_PATTERNS if p not in ("*.safetensors", INDEX_NAME)]
_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})/?$")


# ====================================================================== the recipe


@dataclass
class PublishedRecipe:
    """What ``hubkit.json``'s ``regenerate`` section (or a run's manifest) says, with its direction file found.

    Vectors are read only when the compute starts (``load_vectors``): everything checked before writing needs
    only ``d`` and the layers, from the file's header, so the byte copy starts before any vector is read.
    """

    spec: RecipeSpec
    layer_convention: str  # the convention of ``spec.layer``
    stored: str  # the convention of the direction file's layer keys
    d: int
    direction_file: str  # as shown to users (repo-relative path)
    available: list[int]  # the file's layers (its convention)
    load_vectors: VectorLoader = field(repr=False, compare=False)
    base_model: str | None
    base_model_revision: str | None
    load_project_out: VectorLoader | None = field(default=None, repr=False, compare=False)
    project_out_available: list[int] = field(default_factory=list)
    shards_sha256: dict[str, str] = field(default_factory=dict)
    model_type: str | None = None
    source: str = ""  # local path or repo id
    source_revision: str | None = None  # commit, for a Hub source
    title: str | None = None

    @property
    def direction_name(self) -> str:
        return self.spec.direction

    @property
    def layer(self) -> Any:
        return self.spec.layer

    @property
    def targets(self) -> tuple[str, ...]:
        return self.spec.targets

    @cached_property
    def recipe(self) -> Recipe:
        """The registered recipe bound to these parameters (:mod:`hubkit.weights.recipes`)."""
        return recipes.for_spec(self.spec, convention=self.layer_convention, stored=self.stored,
                                load=self.load_vectors, load_project_out=self.load_project_out,
                                available=self.available)


def _canonical_loader(path: Path, rel: str) -> VectorLoader:
    from hubkit.formats.directions import canonical_vector

    return lambda layers: {i: canonical_vector(path, i, display=rel) for i in layers}


def recipe_from_source(source: RepoSource) -> PublishedRecipe:
    """The recipe ``hubkit.json`` records in a published repo, its direction files verified by sha256."""
    from hubkit.formats.directions import canonical_layout

    where = f"{source.where}: {HUBKIT_JSON}"
    meta = source.meta
    if meta is None:
        raise HubkitError(f"{source.where}: no {HUBKIT_JSON} (not a hubkit repo)")
    regen = meta.regenerate
    if regen is None:
        raise HubkitError(f"{where}: no 'regenerate' recipe (this run publishes no abliteration recipe)")

    def canonical(name: str, key: str) -> tuple[Path, str, str, dict[int, int]]:
        entry = meta.direction(name)
        if entry is None or not entry.canonical:
            raise HubkitError(f"{where}: regenerate.{key} '{name}' has no entry with a canonical file in directions")
        path = source.verified(entry.canonical, ProvenanceError)
        file_meta, dims = canonical_layout(path, display=entry.canonical)
        return path, entry.canonical, file_meta.get("layer_convention", "block"), dims

    if regen.layer is None:
        raise HubkitError(f"{where}: regenerate.layer is missing")
    path, rel, stored, dims = canonical(regen.direction, "direction")
    entry = meta.direction(regen.direction)
    convention = regen.layer_convention or (entry.layer_convention if entry else None) or stored
    g_loader, g_layers = None, []
    if regen.spec.project_out:
        g_path, g_rel, g_stored, g_dims = canonical(regen.spec.project_out, "project_out")
        if g_stored != stored or set(g_dims.values()) != set(dims.values()):
            raise ProvenanceError(f"{g_rel}: project_out '{regen.spec.project_out}' ({g_stored}, d={_d(g_dims)}) must "
                                  f"match the direction ({stored}, d={_d(dims)})")
        g_loader, g_layers = _canonical_loader(g_path, g_rel), sorted(g_dims)
    if regen.layer != "each":  # the layer(s) the recipe names must be in the file, whatever the base
        shift = {("block", "hidden_states"): 1, ("hidden_states", "block"): -1}.get((convention, stored), 0)
        x = float(regen.layer) + shift
        wanted = [math.floor(x)] + ([math.floor(x) + 1] if x != math.floor(x) else [])
        gone = [i for i in wanted if i not in dims]
        if gone:
            raise DirectionError(f"{rel}: no layer {gone[0]} ({stored} convention); has {layer_span(list(dims), 'none')}")
    run = meta.run or {}
    return PublishedRecipe(
        spec=regen.spec,
        layer_convention=convention,
        stored=stored,
        d=_d(dims),
        direction_file=rel,
        available=sorted(dims),
        load_vectors=_canonical_loader(path, rel),
        load_project_out=g_loader,
        project_out_available=g_layers,
        base_model=regen.base_model or run.get("base_model"),
        base_model_revision=regen.base_model_revision or run.get("base_model_revision"),
        shards_sha256=dict(regen.shards_sha256 or {}),
        model_type=regen.model_type or run.get("model_type"),
        source=source.repo_id or str(source.root),
        source_revision=source.commit,
        title=run.get("title"),
    )


def _d(dims: dict[int, int]) -> int:
    return next(iter(dims.values()), 0)


def recipe_from_run(run: Run) -> PublishedRecipe:
    """The recipe of a loaded run (``hubkit.yaml``), as the publish side sees it before anything is staged."""
    r = run.manifest.regenerate
    if r is None:
        raise HubkitError(f"{run.root}/hubkit.yaml: no 'regenerate' recipe")
    ds = run.direction(r.direction)
    layer = r.layer if r.layer is not None else ds.selected_layer
    if layer is None:
        raise HubkitError(
            f"{run.root}/hubkit.yaml: regenerate.layer is needed ({ds.source} has several layers)"
        )
    g = run.direction(r.project_out) if r.project_out else None

    def loader(d: Any) -> VectorLoader:
        return lambda layers: {i: d.vector(i).double().numpy() for i in layers}

    return PublishedRecipe(
        spec=dataclasses.replace(r, layer=layer),
        layer_convention=ds.layer_convention,
        stored=ds.layer_convention,
        d=ds.d,
        direction_file=ds.source or ds.name,
        available=ds.layer_ids,
        load_vectors=loader(ds),
        load_project_out=loader(g) if g is not None else None,
        project_out_available=g.layer_ids if g is not None else [],
        base_model=run.manifest.base_model,
        base_model_revision=run.manifest.base_model_revision,
        source=str(run.root),
        title=run.manifest.title,
    )


def load_recipe(source: str | Path | Run, *, revision: str | None = None) -> PublishedRecipe:
    """The recipe of a Hub repo (``revision`` resolved once to a commit), a staged tree, or a run folder."""
    if not isinstance(source, (str, Path)):
        return recipe_from_run(source)
    path = Path(source)
    if path.exists():
        if revision:
            raise HubkitError(f"--revision {revision}: only for a Hub repo, {source} is a local folder")
        if (path / HUBKIT_JSON).is_file():
            return recipe_from_source(RepoSource.local(path))
        if (path / "hubkit.yaml").is_file():
            from hubkit.run.run import load_run

            return recipe_from_run(load_run(path))
        raise HubkitError(
            f"{path}: neither {HUBKIT_JSON} (a staged or pulled repo) nor hubkit.yaml (a run folder)"
        )
    if not is_repo_id(str(source)):
        raise HubkitError(f"{source}: no such folder, and not a Hub repo id (OWNER/NAME)")
    return recipe_from_source(RepoSource.hub(str(source), revision))


# ====================================================================== the base checkpoint


@dataclass
class BaseCheckpoint:
    path: Path
    repo_id: str | None  # None: a local folder of unknown origin
    commit: str | None
    notes: list[str] = field(default_factory=list)
    fetched: bool = False  # resolved and downloaded through the Hub client here (not a folder found on disk)


def resolve_base(
    recipe: PublishedRecipe, base_model: str | Path | None = None, *, plan_only: bool = False
) -> BaseCheckpoint:
    """Find or fetch the base checkpoint, refusing one that is not the recorded base model / revision."""
    given = base_model if base_model is not None else recipe.base_model
    if given is None:
        raise ProvenanceError(f"{recipe.source}: the recipe records no base_model; pass --base-model")
    local = Path(given)
    if local.is_dir():
        return _local_base(recipe, local)
    given = str(given)
    if not is_repo_id(given):
        raise HubkitError(f"--base-model {given}: no such folder, and not a Hub repo id (OWNER/NAME)")
    if recipe.base_model and given.lower() != recipe.base_model.lower():
        raise ProvenanceError(
            f"--base-model {given} ≠ {recipe.base_model}, the base_model the recipe records ({recipe.source})"
        )
    return _hub_base(given, recipe.base_model_revision, plan_only=plan_only)


def _local_base(recipe: PublishedRecipe, path: Path) -> BaseCheckpoint:
    m = _SNAPSHOT.search(path.resolve().as_posix())
    if m is None:
        return BaseCheckpoint(
            path,
            None,
            None,
            [f"base is the local folder {path}: its origin can't be checked, only its config and tensors"],
        )
    repo_id, commit = f"{m['org']}/{m['name']}", m["commit"]
    if recipe.base_model and repo_id.lower() != recipe.base_model.lower():
        raise ProvenanceError(
            f"{path}: a snapshot of {repo_id}, the recipe records base_model {recipe.base_model}"
        )
    rev = recipe.base_model_revision
    if rev and re.fullmatch(r"[0-9a-f]{40}", rev) and rev != commit:
        raise ProvenanceError(
            f"{path}: snapshot of {repo_id} at {commit[:12]}, the recipe records revision {rev[:12]}"
        )
    return BaseCheckpoint(path, repo_id, commit, [
        f"base is the local folder {path}, laid out as the Hub cache's snapshot of {repo_id} at {commit[:12]}: "
        "its name says so, its files were not checked against the Hub"])


def _hub_base(repo_id: str, revision: str | None, *, plan_only: bool) -> BaseCheckpoint:
    hub = Hub()
    commit = hub.model_commit(repo_id, revision)
    patterns = BASE_PATTERNS if not plan_only else [p for p in BASE_PATTERNS if p != "*.safetensors"]
    path = hub.snapshot(repo_id, commit, allow_patterns=patterns)
    notes = [] if revision else [f"the recipe records no base_model_revision; used {repo_id}@{commit[:12]}"]
    return BaseCheckpoint(path, repo_id, commit, notes, fetched=True)


def confine_base(base: BaseCheckpoint) -> None:
    """Refuse a base folder whose files lead outside it (a symbolic link to another file would be read, and
    copied into the output, as the model's). Links into a Hub cache's content store are the one exception (a
    snapshot folder links into ``../../blobs``, and a folder of links to a snapshot's files is common): a
    ``models--ORG--NAME/blobs/<hash>`` file is a downloaded file, not an arbitrary one."""
    here = base.path.resolve()
    for pattern in BASE_PATTERNS:
        for f in sorted(base.path.glob(pattern)):
            real = f.resolve()
            in_cache = real.parent.name == "blobs" and real.parent.parent.name.startswith("models--")
            if not (real.is_relative_to(here) or in_cache):
                raise ProvenanceError(f"{f}: leads outside the base folder (to {real}); refused")


def _remote_index(base: BaseCheckpoint) -> tuple[list[Any], dict[str, Any]]:
    """Shards and tensors of a Hub checkpoint from its safetensors headers alone (range requests), for --plan."""
    from hubkit.formats.safetensors_io import ShardInfo, TensorInfo

    assert base.repo_id is not None and base.commit is not None
    meta = Hub().safetensors_metadata(base.repo_id, base.commit)
    shards, tensors = [], {}
    for fname, fmeta in sorted(meta.files_metadata.items()):
        end = 0
        for name, t in fmeta.tensors.items():
            b, e = t.data_offsets
            tensors[name] = TensorInfo(name, fname, t.dtype, tuple(t.shape), b, e)
            end = max(end, e)
        shards.append(ShardInfo(fname, end, 0))
    return shards, tensors


# ====================================================================== provenance


def check_provenance(recipe: PublishedRecipe, config: dict[str, Any], base: BaseCheckpoint) -> None:
    """Refuse a base that doesn't fit the recipe, before anything is written; both values in the message."""
    where = f"{base.path}/config.json"
    model_type, d, n_layers = config_facts(config, where)
    if d != recipe.d:
        raise ProvenanceError(
            f"{where}: hidden_size {d} ≠ d={recipe.d} of direction '{recipe.direction_name}' ({recipe.direction_file})"
        )
    if isinstance(recipe.layer, (int, float)):
        block = to_block_index(math.floor(recipe.layer), recipe.layer_convention)
        if not -1 <= block < n_layers:
            raise ProvenanceError(
                f"{where}: recipe layer {recipe.layer} ({recipe.layer_convention}) is block {block}, the model has "
                f"blocks 0–{n_layers - 1}"
            )
    needed = recipe.recipe.blocks_needed(n_layers)
    missing = [i for i in needed if i not in recipe.available]
    if missing:
        raise ProvenanceError(
            f"{recipe.direction_file}: the recipe (layer {recipe.layer}) needs layer(s) {layer_span(missing, 'none')} "
            f"({recipe.stored} convention) for a base of {n_layers} blocks; the file has "
            f"{layer_span(recipe.available, 'none')}"
        )
    if recipe.load_project_out is not None:
        gone = [i for i in needed if i not in recipe.project_out_available]
        if gone:
            raise ProvenanceError(
                f"project_out '{recipe.spec.project_out}': no layer(s) {layer_span(gone, 'none')} "
                f"({recipe.stored} convention); the direction needs them"
            )
    if recipe.model_type:
        text_type = (config.get("text_config") or {}).get("model_type")
        if recipe.model_type not in (model_type, text_type):
            raise ProvenanceError(
                f"{where}: model_type {model_type} ≠ {recipe.model_type} recorded in the recipe"
            )


# ====================================================================== regenerate


@dataclass
class RegenerateResult:
    """What a regeneration did: where the folder is, its shard hashes, and how it compares with the recipe."""

    out: Path | None
    plan: TensorPlan
    shards_sha256: dict[str, str]
    verification: str  # "bit-identical" | "differs" | "not recorded" | "not run" (plan only)
    differing: list[str]
    worst: TensorCheck | None
    orthogonal: bool
    recipe: PublishedRecipe
    base: BaseCheckpoint
    notes: list[str] = field(default_factory=list)

    @property
    def worst_ratio(self) -> float | None:
        return None if self.worst is None else self.worst.after

    def summary(self) -> str:
        lines = [self.plan.summary()]
        if self.out is not None:
            lines.append(f"wrote {self.out}")
        if self.verification == "bit-identical":
            lines.append(f"bit-identical to the published recipe ({len(self.shards_sha256)} shard(s))")
        elif self.verification == "differs":
            lines.append(f"differs from the published recipe in: {', '.join(self.differing)}")
        elif self.verification == "not recorded":
            lines.append("the recipe records no shard sha256s (publish --record-regeneration); not compared")
        if self.worst is not None:
            w = self.worst
            lines.append(
                f"worst component along r after: {w.after:.2e} ({w.name}, {w.dtype}, rounding level {w.threshold:.1e}; "
                f"before: {w.before:.2e})"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class VerificationFailed(HubkitError):
    """The regenerated shards differ from the recorded ones (or a matrix kept a component along r)."""

    def __init__(self, message: str, result: RegenerateResult):
        super().__init__(message)
        self.result = result


def prepare(
    source: str | Path | Run, revision: str | None, base_model: str | Path | None, plan_only: bool
) -> tuple[PublishedRecipe, BaseCheckpoint, TensorPlan]:
    recipe = load_recipe(source, revision=revision)
    base = resolve_base(recipe, base_model, plan_only=plan_only)
    confine_base(base)
    config = read_config(base.path)
    check_provenance(recipe, config, base)
    if plan_only and not any(base.path.glob("*.safetensors")) and base.repo_id:
        shards, tensors = _remote_index(base)
    else:
        shards, tensors = read_index(base.path)
    plan = recipe.recipe.assign(build_plan(config, tensors, shards, recipe.targets))
    return recipe, base, plan


def regenerate(
    source: str | Path | Run,
    *,
    revision: str | None = None,
    base_model: str | Path | None = None,
    out: str | Path | None = None,
    verify: bool = True,
    plan_only: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> RegenerateResult:
    """Rebuild the abliterated model of ``source`` into ``out`` (default ``./<base name>-<direction>-abliterated``).

    Provenance is checked before anything is written; the folder appears only when complete. With ``verify``,
    shards that differ from the recorded sha256s (or a matrix left with a component along r above its dtype's
    rounding level) raise :class:`VerificationFailed` once the folder is written; the result rides on it.
    """
    recipe, base, plan = prepare(source, revision, base_model, plan_only)
    notes = list(base.notes)
    if plan_only:
        return RegenerateResult(None, plan, {}, "not run", [], None, True, recipe, base, notes)

    if out is None:
        stem = (base.repo_id or base.path.name).split("/")[-1]
        out = Path.cwd() / f"{stem}-{recipe.direction_name}-abliterated"
    out = Path(out)
    with staging_dir(out, overwrite=overwrite) as tmp:
        result = execute_plan(plan, base.path, tmp, _vectors(recipe, plan), progress=progress)
        result.refuse_non_finite(str(base.path))
        for pattern in _COPIED:
            for f in sorted(base.path.glob(pattern)):
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
        if (base.path / INDEX_NAME).is_file():
            shutil.copyfile(base.path / INDEX_NAME, tmp / INDEX_NAME)
        verification, differing = _compare(recipe.shards_sha256, result.shards_sha256)
        res = RegenerateResult(
            out,
            plan,
            result.shards_sha256,
            verification,
            differing,
            result.worst,
            result.all_orthogonal,
            recipe,
            base,
            notes,
        )
        (tmp / "README.md").write_text(render_card(res, result), encoding="utf-8")
    if result.numba_missing:  # numba missing or broken: the same bytes, much slower; say how to mend it
        res.notes.append("numba could not be imported, so the numpy kernels computed (the same bytes, 8-20x "
                         "slower): `pip install numba` for the fused kernels")
    if result.compiled:  # said once, here (not in the card): why this run took longer than the next will
        res.notes.append(f"numba compiled {result.compiled} kernel(s) for this machine during this run (once: "
                         f"later runs load them from {result.kernel_cache})")

    if verify and verification == "differs":
        raise VerificationFailed(
            f"{out}: shard(s) differ from the published recipe: {', '.join(differing)} (the folder is kept)",
            res,
        )
    if verify and not res.orthogonal and res.worst is not None:
        raise VerificationFailed(
            f"{out}: {res.worst.name} keeps ‖rᵀW‖/‖W‖ = {res.worst.after:.2e} along r, above the "
            f"{res.worst.dtype} rounding level {res.worst.threshold:.1e}",
            res,
        )
    return res


def _vectors(recipe: PublishedRecipe, plan: TensorPlan) -> Callable[[], dict[str, Any]]:
    """The plan's vectors, read when the executor asks (after the byte copy has started)."""
    return lambda: recipe.recipe.vectors(sorted({op.vector for op in plan.ops}))


def _compare(recorded: dict[str, str], ours: dict[str, str]) -> tuple[str, list[str]]:
    if not recorded:
        return "not recorded", []
    differing = sorted(n for n in set(recorded) | set(ours) if recorded.get(n) != ours.get(n))
    return ("differs", differing) if differing else ("bit-identical", [])


def record_regeneration(
    source: str | Path | Run,
    base_dir: str | Path,
    *,
    progress: bool = False,
) -> dict[str, str]:
    """The sha256 of each shard ``regenerate`` would write, for ``hubkit.json``'s ``regenerate.shards_sha256``.

    Nothing is written: the shards are streamed through the hash only.
    """
    recipe, base, plan = prepare(source, None, base_dir, False)
    result = execute_plan(plan, base.path, None, _vectors(recipe, plan), progress=progress)
    result.refuse_non_finite(str(base.path))
    return result.shards_sha256


# ====================================================================== the weights card


def render_card(res: RegenerateResult, result: ExecutionResult) -> str:
    """README.md of the regenerated folder: where the weights come from and how to check them."""
    r, plan, base = res.recipe, res.plan, res.base
    base_name = base.repo_id or r.base_model or str(base.path)
    if base.repo_id and base.commit and base.fetched:
        base_line = f"{base.repo_id} @ `{base.commit}` (resolved and fetched by commit through the Hub client)"
    elif base.repo_id and base.commit:
        base_line = (f"{base.repo_id} @ `{base.commit}`, by its folder's name (a local Hub-cache snapshot; its "
                     "files were not checked against the Hub)")
    else:  # a folder of unknown origin: only its config and tensors were checked
        said = f", said to be {r.base_model}" if r.base_model else ""
        base_line = f"a local folder (`{base.path.name}`){said}; its origin was not verified"
    src = r.source + (f" @ {r.source_revision}" if r.source_revision else "")
    counts = plan.counts()
    forms = {"embed_tokens": "token embedding (rows): W ← W − w (W r) rᵀ",
             "attn_out": "attention output of every block (o_proj / linear_attn.out_proj)",
             "mlp_down": "MLP down projection of every block (experts included)",
             "lm_head": "lm_head (rows): W ← W − w (W r) rᵀ"}
    targets = [f"{forms[t]} — {counts.get(t, 0)} tensor(s)" for t in plan.targets if t in forms]
    if plan.untouched:
        targets.append(f"{len(plan.untouched)} targeted tensor(s) have weight 0 at their block and were left as they are")
    if plan.tied and "embed_tokens" in plan.targets:
        targets.append("**Tied embeddings**: the checkpoint has no separate lm_head, so the unembedding changes "
                       "with the embedding.")
    worst = result.worst
    worst_line = None if worst is None else (
        f"Worst remaining component along r (‖rᵀW‖/‖W‖; ‖W r‖/‖W‖ for rows): {worst.after:.2e} in `{worst.name}` "
        f"({worst.dtype}; its rounding level is {worst.threshold:.1e}; before: {worst.before:.2e}).")
    verdict = {
        "bit-identical": "**bit-identical to the published recipe** (every shard's sha256 matches).",
        "differs": "**differs from the published recipe** in: " + ", ".join(f"`{n}`" for n in res.differing) + ".",
        "not recorded": "the recipe records no shard hashes, so there was nothing to compare with.",
    }[res.verification]
    whole = r.spec.is_seed
    data = WeightsCardData(
        base_name=base_name,
        heading=f"{base_name.split('/')[-1]} with the '{r.direction_name}' direction "
                + ("removed" if whole else "ablated (the recipe below)"),
        base_line=base_line,
        direction_line=f"`{r.direction_name}` from `{r.direction_file}`, d = {r.d}, every vector renormalized to unit "
                       "length in float64",
        source=src,
        title=r.title,
        recipe_lines=r.recipe.describe(),
        targets=targets,
        notes=[n for n in [*plan.notes, *res.notes] if "tied embeddings" not in n],
        n_ops=len(plan.ops),
        n_tensors=plan.n_tensors,
        worst=worst_line,
        verdict=verdict,
        shards=sorted(res.shards_sha256.items()),
        reproduce=f"hubkit regenerate {r.source}" + (f" --revision {r.source_revision}" if r.source_revision else ""),
        hubkit_version=__version__,
    )
    return render_weights_card(data)
