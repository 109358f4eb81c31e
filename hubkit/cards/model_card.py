"""The model card: plain data objects built from a :class:`Run`, rendered by jinja2 templates.

The card is what people read on the Hub, so it says up front what happened (the status banner), shows
every number with its test named, and describes every file. The split is strict:

- ``build_card_data`` computes (statistics, overlap structure, file descriptions, front matter) and is
  pure: it reads nothing the Run did not already load.
- the templates in ``templates/`` only format what they are given, so a researcher can restyle a card
  (``--template DIR``, overriding any subset of the partials) without touching a number.
- ``build_assets`` draws the per-layer ranking plots (deterministic PNG bytes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from hubkit import __version__
from hubkit.cards.plots import delta_heatmap, ranking_plot, set_heatmap, weight_plot
from hubkit.cards.render import FENCE, render
from hubkit.formats.hubjson import HistoryEntry
from hubkit.formats.recipe import describe_spec, weights_by_block
from hubkit.run.geometry import PRINCIPAL
from hubkit.run.stats import (
    EvaluationStats,
    analyze_evaluation,
    check_claims,
)

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

    from hubkit.formats.hubjson import FileRecord, HubJson, RegenerateRecord
    from hubkit.run.ranking import Ranking
    from hubkit.run.run import Run

MAIN_TEMPLATE = "card.md.j2"
HUB = "https://huggingface.co"

STATUS_LABELS = {
    "positive": "positive result",
    "null-result": "null result",
    "regression": "regression",
    "inconclusive": "inconclusive",
    "superseded": "superseded",
}
CONVENTION_TEXT = {
    "block": "layer i is the output of decoder block i (0-based), `hidden_states[i + 1]` in transformers",
    "hidden_states": "layer i is `hidden_states[i]` in transformers (0 = the embeddings, i = output of block i − 1)",
}
TARGET_TEXT = {
    "embed_tokens": "the token embeddings (`embed_tokens`)",
    "attn_out": "every block's attention output projection (`o_proj` / `linear_attn.out_proj`)",
    "mlp_down": "every block's MLP down-projection (`mlp.down_proj`, experts included)",
    "lm_head": "the output head (`lm_head`)",
}
RELATION_TEXT = {"supersedes": "supersedes", "superseded-by": "superseded by", "follow-up": "follow-up",
                 "see-also": "see also"}
DATA_KINDS = ("direction", "ranking", "contrast", "results", "data")
EXAMPLES = 3
EXAMPLE_CHARS = 240


# --------------------------------------------------------------------------- data objects


@dataclass
class RelatedView:
    repo_id: str
    relation: str
    note: str | None
    url: str

    @property
    def relation_text(self) -> str:
        return RELATION_TEXT.get(self.relation, self.relation)


@dataclass
class Banner:
    status: str
    label: str  # "null result", "regression", ...
    note: str | None
    successor: RelatedView | None = None  # the superseded-by repo, for status superseded
    caution: str | None = None  # a positive status no test carries: what the numbers are


@dataclass
class TextSection:
    title: str
    text: str
    source: str | None = None


@dataclass
class DirectionView:
    name: str
    file: str | None
    canonical: str
    layers: list[int]
    d: int
    norm_min: float
    norm_max: float
    unit_norm: bool
    selected_layer: int | None
    convention: str
    method: str | None
    block: int | None  # the decoder block whose output the selected layer is (-1: the embeddings)
    llama_cpp_layer: int | None  # the control vector's direction.N for the selected layer, if representable


@dataclass
class RankingRow:
    layer: int
    values: list[float | None]
    selected: bool
    best: bool


@dataclass
class RankingView:
    direction: str | None
    file: str
    convention: str
    columns: list[str]
    rows: list[RankingRow]
    selected_layer: int | None
    best_layer: int | None
    best_by: list[str]  # the metric that picks the best layer, then its tie-breakers
    plot: str | None  # repo path of the PNG

    @property
    def selected_row(self) -> RankingRow | None:
        return next((r for r in self.rows if r.selected), None)

    @property
    def best_row(self) -> RankingRow | None:
        return next((r for r in self.rows if r.best), None)


@dataclass
class ContrastView:
    label: str
    file: str
    count: int
    examples: list[str]
    duplicates: int


@dataclass
class FileView:
    path: str
    size: int
    sha256: str
    kind: str
    what: str

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]


@dataclass
class LeftOutView:
    path: str
    size: int
    files: int
    reason: str


@dataclass
class QuickUse:
    repo_id: str
    direction: DirectionView
    name_arg: bool  # the repo has several directions: pass name=
    others: list[str]
    alpha: float
    ablate: bool  # the run removes the direction (abliteration): show the inference-time equivalent
    base_model: str | None
    base_model_revision: str | None
    gguf_base: str  # the file name shown for the base model's GGUF


@dataclass
class Rebuild:
    repo_id: str
    direction: str
    layer: Any  # an int; a float index or "each" for the heretic-style recipes
    convention: str
    targets: list[str]
    target_text: list[str]
    base_model: str
    base_model_revision: str | None
    verified: bool  # the recipe records shard sha256s that the rebuild is checked against
    weights_path: str | None
    weights_size: int | None
    weights_published: bool
    seed: bool = True  # one layer, weight 1, no norm: the card says it in one sentence
    recipe_lines: list[str] = field(default_factory=list)
    hook_equivalent: bool = True
    weight_plot: str | None = None


@dataclass
class Reproducibility:
    base_model: str | None
    base_model_revision: str | None
    hubkit_version: str
    date: str | None
    authors: list[str]
    compute: str | None
    scripts: list[str]
    data_files: list[FileView]
    data: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # (path, md5, sha256, description)
    seeds: list[int] = field(default_factory=list)
    layers_probed: str | None = None


@dataclass
class GeometryRow:
    layer: int
    mean_cos: float
    lo: float
    hi: float
    norm_min: float
    norm_max: float


@dataclass
class SetView:
    name: str
    canonical: str
    members: list[str]
    convention: str
    d: int
    labels: str
    rows: list[GeometryRow]
    heatmap: str
    bootstrap: str  # "95 % bootstrap over the 12 members (1000 resamples, seed 42)"


@dataclass
class CompareRow:
    layer: int
    before: float
    after: float
    change: float
    lo: float
    hi: float
    member_cos_min: float
    member_cos_mean: float
    least_stable: str


@dataclass
class AxisRow:
    layer: int
    member: str
    cos_before: float
    cos_after: float
    along: float
    orthogonal: float | None  # None: the member did not move


@dataclass
class CompareView:
    before: str
    after: str
    n_members: int
    convention: str
    rows: list[CompareRow]
    heatmap: str
    bootstrap: str
    axis: str | None = None  # how the shift axis is defined, in words
    axis_explained: str | None = None  # principal: σ₁²/Σσ² per layer, in words
    axis_rows: list[AxisRow] = field(default_factory=list)


@dataclass
class AdapterView:
    name: str
    path: str
    base_model: str
    r: int
    lora_alpha: float
    use_rslora: bool
    lora_dropout: float
    target_modules: str
    weights_sha256: str | None
    defaults: list[str]


@dataclass
class ReportedTestRow:
    name: str
    family: str
    test: str
    alternative: str
    n: str
    p: float
    p_holm: float
    p_bh: float
    family_size: int
    note: str | None


@dataclass
class Citation:
    key: str
    title: str
    authors: list[str]
    year: str | None
    url: str | None
    version: str | None


@dataclass
class CardData:
    """Everything a card template may show, already computed."""

    front_matter: str  # YAML between the --- lines (ModelCardData.to_yaml)
    model_card_data: ModelCardData
    title: str
    repo_id: str | None
    repo_url: str | None
    version: str | None
    banner: Banner
    summary: str | None = None
    evaluations: list[EvaluationStats] = field(default_factory=list)
    sections: list[TextSection] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    directions: list[DirectionView] = field(default_factory=list)
    conventions: list[tuple[str, str]] = field(default_factory=list)  # (convention, what layer i means)
    rankings: list[RankingView] = field(default_factory=list)
    contrasts: list[ContrastView] = field(default_factory=list)
    quick_use: QuickUse | None = None
    rebuild: Rebuild | None = None
    reproducibility: Reproducibility | None = None
    files: list[FileView] = field(default_factory=list)
    left_out: list[LeftOutView] = field(default_factory=list)
    related: list[RelatedView] = field(default_factory=list)
    dataset: RelatedView | None = None  # the Hub dataset holding the contrast sets and per-task results
    history: list[HistoryEntry] = field(default_factory=list)
    citation: Citation | None = None
    vector_sets: list[SetView] = field(default_factory=list)
    cross_run: list[Any] = field(default_factory=list)  # publish.related.CrossRun: cosines with related runs
    compares: list[CompareView] = field(default_factory=list)
    adapters: list[AdapterView] = field(default_factory=list)
    reported_tests: list[ReportedTestRow] = field(default_factory=list)


# --------------------------------------------------------------------------- assets (the ranking plots)


def plot_paths(run: Run) -> dict[str, str]:
    """Ranking file -> repo path of its plot: ``assets/ranking.png`` for one ranking, else one per direction."""
    if len(run.rankings) == 1:
        return {run.rankings[0].file: "assets/ranking.png"}
    owners = _ranking_owners(run)
    out = {}
    for rk in run.rankings:
        stem = owners.get(rk.file) or PurePosixPath(rk.file).stem.removesuffix("_ranking")
        out[rk.file] = f"assets/{_slug(stem) or 'ranking'}_ranking.png"
    return out


def _ranking_owners(run: Run) -> dict[str, str]:
    owners: dict[str, str] = {}
    for ds in run.directions:
        rk = run.ranking_for(ds.name)
        if rk is not None and rk.file not in owners:
            owners[rk.file] = ds.name
    return owners


RECIPE_PLOT = "assets/recipe_weights.png"


def build_assets(run: Run) -> dict[str, bytes]:
    """The repo files the card embeds: one PNG of the metrics by layer per ranking, and the recipe's weight
    per block when it is not 1 everywhere."""
    out = {}
    if run.rankings:
        views = {v.file: v for v in _rankings(run, plot_paths(run))}
        out = {path: ranking_plot(views[file]) for file, path in plot_paths(run).items()}
    r = run.manifest.regenerate
    if r is not None and r.weight:
        out[RECIPE_PLOT] = weight_plot(weights_by_block(r), f"regenerate: weight per block ({r.recipe})")
    for name, g in run.set_geometry.items():
        out[heatmap_path(name)] = set_heatmap(g)
    for c in run.compares:
        out[delta_path(c.before, c.after)] = delta_heatmap(c)
    return out


# --------------------------------------------------------------------------- one call for `hubkit card`


# --------------------------------------------------------------------------- card data


def build_card_data(run: Run, files: list[FileRecord], meta: HubJson, cross_run: list[Any] | None = None) -> CardData:
    """Compute everything the card shows from the loaded run, its package files and ``hubkit.json``."""
    m = run.manifest
    repo_id = meta.repo_id or m.repo_id
    related = [RelatedView(r.repo_id, r.relation, r.note, f"{HUB}/{r.repo_id}") for r in m.related]
    successor = next((r for r in related if r.relation == "superseded-by"), None)
    evaluations = [analyze_evaluation(ev) for ev in run.evaluations]
    directions = _directions(run, meta)
    rankings = _rankings(run, plot_paths(run))
    file_views = _files(run, files, rankings)
    ds_repo = meta.dataset_repo
    front = model_card_data(run, evaluations, files, repo_id, ds_repo)
    conventions = sorted({d.convention for d in directions} | {r.convention for r in rankings})
    return CardData(
        front_matter=front.to_yaml(),
        model_card_data=front,
        title=m.title,
        repo_id=repo_id,
        repo_url=f"{HUB}/{repo_id}" if repo_id else None,
        version=meta.version,
        banner=Banner(m.status, STATUS_LABELS.get(m.status, m.status), _oneline(m.status_note),
                      successor if m.status == "superseded" else None,
                      check_claims(m.status, m.status_note, evaluations, m.alpha)[1]),
        summary=_embed(run.summary) if run.summary and run.summary.strip() else None,
        evaluations=evaluations,
        sections=[TextSection(s.title, _embed(s.text), s.source) for s in run.sections if s.text.strip()],
        caveats=[c.strip() for c in m.caveats if c.strip()],
        directions=directions,
        conventions=[(c, CONVENTION_TEXT[c]) for c in conventions if c in CONVENTION_TEXT],
        rankings=rankings,
        contrasts=[ContrastView(c.label, c.file, c.count, [_example(p) for p in c.examples(EXAMPLES)],
                                len(c.duplicates)) for c in run.contrasts],
        quick_use=_quick_use(run, repo_id, directions),
        rebuild=_rebuild(run, repo_id, meta.regenerate),
        reproducibility=_reproducibility(run, file_views),
        files=file_views,
        left_out=_left_out(run),
        related=related,
        dataset=RelatedView(ds_repo, "dataset", None, f"{HUB}/datasets/{ds_repo}") if ds_repo else None,
        history=list(meta.history),
        citation=_citation(run, repo_id, meta.version),
        vector_sets=_sets(run),
        cross_run=list(cross_run or []),
        compares=_compares(run),
        adapters=_adapters(run),
        reported_tests=_reported(run),
    )


def model_card_data(run: Run, evaluations: list[EvaluationStats], files: list[FileRecord],
                    repo_id: str | None = None, dataset_repo: str | None = None) -> ModelCardData:
    """The front matter, through huggingface_hub so that ``ModelCard.load`` reads back the same thing.

    model-index gets one pass-rate metric per arm that *is* this repo's model (``this: true``, or every
    non-baseline arm when none is marked); the Hub would list any other arm's numbers as this model's.
    p-values have no field there and stay in the body.
    """
    from huggingface_hub import EvalResult, ModelCardData

    m = run.manifest
    weights = any(f.kind == "weights" for f in files)
    tags = list(dict.fromkeys([*m.tags, "hubkit", m.status]))
    results = []
    for ev in evaluations:
        ours = [a for a in ev.arms if a.this] or [a for a in ev.arms if not a.baseline]
        for a in ours:
            results.append(EvalResult(
                task_type="text-generation",
                dataset_type=_slug(ev.name) or "evaluation",
                dataset_name=ev.name,
                metric_type="pass_rate",
                metric_value=round(a.rate, 4),
                metric_name=f"pass rate, {a.label} ({a.passes}/{a.n})",
            ))
    kwargs: dict[str, Any] = {}
    if m.base_model:
        # A repo of directions is used on top of its base model (the Hub's "adapter" relation); published
        # orthogonalized weights are a modified copy of the base ("finetune").
        kwargs["base_model_relation"] = "finetune" if weights else "adapter"
    return ModelCardData(
        library_name="hubkit",  # even with weights: they sit in a subfolder, which the Hub's snippets miss
        base_model=m.base_model,
        datasets=[dataset_repo] if dataset_repo else None,  # the data the directions were computed from
        license=m.license,
        tags=tags,
        model_name=(repo_id or m.repo_id or run.root.name).split("/")[-1] if results else None,
        eval_results=results or None,
        **kwargs,
    )


def _directions(run: Run, meta: HubJson) -> list[DirectionView]:
    from hubkit.formats.directions import to_block_index

    entries = {e.name: e for e in meta.directions}
    out = []
    for ds in run.directions:
        e = entries.get(ds.name)
        spec = run.manifest.direction(ds.name)
        norms = list(ds.norms.values())
        block = to_block_index(ds.selected_layer, ds.layer_convention) if ds.selected_layer is not None else None
        out.append(DirectionView(
            name=ds.name,
            file=(e.file if e else None) or (spec.file if spec else ds.source),
            canonical=(e.canonical if e else None) or f"vectors/{ds.name}.safetensors",
            layers=ds.layer_ids,
            d=ds.d,
            norm_min=min(norms),
            norm_max=max(norms),
            unit_norm=ds.unit_norm,
            selected_layer=ds.selected_layer,
            convention=ds.layer_convention,
            method=ds.method,
            block=block,
            # llama.cpp's direction.N is added to block N's output and N = 0 is rejected
            llama_cpp_layer=block if block is not None and block >= 1 else None,
        ))
    return out


def _rankings(run: Run, plots: dict[str, str]) -> list[RankingView]:
    owners = _ranking_owners(run)
    conventions = {d.layer_convention for d in run.directions}
    fallback = conventions.pop() if len(conventions) == 1 else "block"
    out = []
    for rk in run.rankings:
        owner = owners.get(rk.file)
        ds = run.direction(owner) if owner else None
        selected = ds.selected_layer if ds else None
        best = rk.best_layer
        out.append(RankingView(
            direction=owner,
            file=rk.file,
            convention=ds.layer_convention if ds else fallback,
            columns=list(rk.columns),
            rows=[RankingRow(layer=int(r["layer"]), values=[_finite(r.get(c)) for c in rk.columns],
                             selected=int(r["layer"]) == selected, best=int(r["layer"]) == best)
                  for r in rk.rows],
            selected_layer=selected,
            best_layer=best,
            best_by=_best_by(rk),
            plot=plots.get(rk.file),
        ))
    return out


def _best_by(rk: Ranking) -> list[str]:
    from hubkit.run.ranking import BEST_BY

    return [c for c in BEST_BY if c in rk.columns] or ([rk.best_metric] if rk.best_metric else [])


def _finite(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


GROUP_AT = 12  # a folder with more files than this that the card doesn't describe one by one is one row


def _files(run: Run, files: list[FileRecord], rankings: list[RankingView]) -> list[FileView]:
    """One row per file, except folders of many undescribed files (per-task result folders: 89 tasks × 3 arms
    made a 142 KB card), which get one row each; hubkit.json still lists every file with its sha256."""
    what = _descriptions(run, rankings)
    count: dict[str, int] = {}
    for f in files:
        if f.path not in what:
            parts = f.path.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                count[folder] = count.get(folder, 0) + 1
    grouped = {folder for folder, n in count.items() if n > GROUP_AT}
    rows: list[FileView] = []
    seen: set[str] = set()
    for f in files:
        # the deepest folder holding many undescribed files: results/abl_trials/, not all of results/
        folder = next((g for g in sorted(grouped, key=len, reverse=True) if f.path.startswith(g + "/")), None)
        if folder is None or f.path in what:
            rows.append(FileView(f.path, f.size, f.sha256, f.kind,
                                 what.get(f.path) or _KIND_TEXT.get(f.kind, f.kind)))
        elif folder not in seen:
            seen.add(folder)
            inside = [x for x in files if x.path.startswith(folder + "/") and x.path not in what]
            kinds = sorted({x.kind for x in inside})
            rows.append(FileView(folder + "/", sum(x.size for x in inside), "", kinds[0] if len(kinds) == 1 else "data",
                                 f"{len(inside)} files ({', '.join(_KIND_TEXT.get(k, k) for k in kinds)}); each "
                                 "with its sha256 in hubkit.json"))
    return rows


_KIND_TEXT = {
    "manifest": "the run's manifest (`hubkit.yaml`)",
    "script": "script",
    "notes": "notes / log",
    "report": "report",
    "data": "data",
    "weights": "weights",
    "asset": "card asset",
    "direction": "direction",
    "ranking": "per-layer ranking",
    "contrast": "contrast prompts",
    "results": "per-task results",
}


def _descriptions(run: Run, rankings: list[RankingView]) -> dict[str, str]:
    """What each file of the repo is, in words: each artifact kind describes the files it owns."""
    from hubkit.run.kinds import kinds

    out: dict[str, str] = {}
    for kind in kinds():
        out.update(kind.describe(run))
    for rv in rankings:
        if rv.plot:
            who = f" of `{rv.direction}`" if rv.direction else ""
            out[rv.plot] = f"plot of the ranking{who} by layer (shown above)"
    return out


def _left_out(run: Run) -> list[LeftOutView]:
    """Run files the repo does not carry, weights folders summarised; credential-like files are not named."""
    m = run.manifest
    out: list[LeftOutView] = []
    weights: dict[str, list[int]] = {}
    for f in run.files:
        if f.included or (f.reason or "").startswith("credential"):
            continue
        if f.kind == "weights" and m.weights:
            weights.setdefault(m.weights.path.rstrip("/") + "/", []).append(f.size)
        else:
            out.append(LeftOutView(f.path, f.size, 1, _REASONS.get(f.reason or "", f.reason or "left out")))
    for path, sizes in weights.items():
        why = "weights not published" + (": rebuild them with `hubkit regenerate` (below)" if m.regenerate else "")
        out.insert(0, LeftOutView(path, sum(sizes), len(sizes), why))
    return out


_REASONS = {"matches exclude": "excluded by `exclude` in hubkit.yaml",
            "not in include": "not matched by `include` in hubkit.yaml"}


def _quick_use(run: Run, repo_id: str | None, directions: list[DirectionView]) -> QuickUse | None:
    if not directions:
        return None
    r = run.manifest.regenerate
    main = next((d for d in directions if r and d.name == r.direction), directions[0])
    if main.selected_layer is None:
        return None  # without a selected layer there is no one-line use to show
    m = run.manifest
    return QuickUse(repo_id=repo_id or "OWNER/NAME", direction=main, name_arg=len(directions) > 1,
                    others=[d.name for d in directions if d is not main], alpha=4.0, ablate=r is not None,
                    base_model=m.base_model, base_model_revision=m.base_model_revision,
                    gguf_base=f"{m.base_model.split('/')[-1]}.gguf" if m.base_model else "BASE_MODEL.gguf")


def _rebuild(run: Run, repo_id: str | None, entry: RegenerateRecord | None) -> Rebuild | None:
    if entry is None or entry.layer is None or not entry.base_model:
        return None
    m = run.manifest
    wsizes = [f.size for f in run.files if f.kind == "weights"]
    return Rebuild(
        repo_id=repo_id or "OWNER/NAME",
        direction=entry.direction,
        layer=entry.layer,
        convention=entry.layer_convention or "block",
        targets=list(entry.targets),
        target_text=[TARGET_TEXT.get(t, f"`{t}`") for t in entry.targets],
        base_model=entry.base_model,
        base_model_revision=entry.base_model_revision,
        verified=bool(entry.shards_sha256),
        weights_path=m.weights.path.rstrip("/") + "/" if m.weights else None,
        weights_size=sum(wsizes) if wsizes else None,
        weights_published=bool(m.weights and m.weights.publish),
        seed=entry.spec.is_seed,
        recipe_lines=describe_spec(entry.spec, entry.layer_convention or "block"),
        hook_equivalent=entry.spec.norm == "none",
        weight_plot=RECIPE_PLOT if entry.spec.weight else None,
    )


def _reproducibility(run: Run, files: list[FileView]) -> Reproducibility:
    m = run.manifest
    return Reproducibility(
        base_model=m.base_model,
        base_model_revision=m.base_model_revision,
        hubkit_version=__version__,
        date=m.date,
        authors=list(m.authors),
        compute=m.compute,
        scripts=[f.path for f in files if f.kind == "script"],
        data_files=[f for f in files if f.kind in DATA_KINDS and f.sha256  # folders of many files: hubkit.json
                    and f.path not in {d.file for d, _ in run.data_files}],
        data=[(h.path, h.md5, h.sha256, d.description) for d, h in run.data_files],
        seeds=list(m.seeds),
        layers_probed=", ".join(sorted({f"{vs.layers} ({vs.layer_convention})" for vs in run.vector_sets.values()}))
        or None,
    )


def _bootstrap_text(interval: Any, n: int) -> str:
    return (f"{interval.confidence:.0%} percentile bootstrap over the {n} members ({interval.n_resamples} resamples, "
            f"seed {interval.seed})")


def _sets(run: Run) -> list[SetView]:
    out = []
    for name, g in run.set_geometry.items():
        vs = run.vector_sets[name]
        rows = [GeometryRow(lg.layer, lg.mean_offdiag, lg.interval.lo, lg.interval.hi, float(min(lg.norms)),
                            float(max(lg.norms))) for lg in g.layers]
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(vs.labels.items()))
        out.append(SetView(name, f"vectors/{name}.safetensors", list(g.members), g.layer_convention, vs.d, labels,
                           rows, heatmap_path(name), _bootstrap_text(g.layers[0].interval, len(g.members))))
    return out


def _compares(run: Run) -> list[CompareView]:
    out = []
    for c in run.compares:
        rows = []
        for cl in c.layers:
            i = int(min(range(len(c.members)), key=lambda k: cl.member_cos[k]))
            rows.append(CompareRow(cl.layer, cl.before, cl.after, cl.change, cl.change_interval.lo,
                                   cl.change_interval.hi, float(cl.member_cos[i]), float(sum(cl.member_cos)
                                                                                         / len(cl.member_cos)),
                                   c.members[i]))
        view = CompareView(c.before, c.after, len(c.members), c.layer_convention, rows,
                           delta_path(c.before, c.after),
                           _bootstrap_text(c.layers[0].change_interval, len(c.members)) + ", paired")
        if c.axis is not None:
            view.axis = (f"the first principal direction of the {len(c.members)} members' shifts (after − before, "
                         "uncentred), signed so that their sum projects positively" if c.axis == PRINCIPAL else
                         f"the shift of `{c.axis}` (its after − before vector)")
            if c.axis == PRINCIPAL:
                view.axis_explained = ", ".join(f"layer {cl.layer}: {cl.axis.explained:.3f}" for cl in c.layers
                                                if cl.axis is not None and cl.axis.explained is not None)
            for cl in c.layers:
                ax = cl.axis
                if ax is None:
                    continue
                view.axis_rows += [AxisRow(cl.layer, m, float(ax.cos_before[i]), float(ax.cos_after[i]),
                                           float(ax.along[i]), None if math.isnan(ax.orthogonal_share[i])
                                           else float(ax.orthogonal_share[i]))
                                   for i, m in enumerate(c.members)]
        out.append(view)
    return out


def _adapters(run: Run) -> list[AdapterView]:
    out = []
    for a in run.adapters:
        weights = next((f.sha256 for f in a.files if f.path.endswith("adapter_model.safetensors")), None)
        targets = a.target_modules if isinstance(a.target_modules, str) else ", ".join(a.target_modules or [])
        out.append(AdapterView(a.name, a.path, a.base_model, a.r, a.lora_alpha, a.use_rslora, a.lora_dropout,
                               targets, weights, list(a.defaults)))
    return out


def _reported(run: Run) -> list[ReportedTestRow]:
    return [ReportedTestRow(t.test.name, t.test.family, t.test.test or "not stated",
                            {"greater": "one-sided (greater)", "less": "one-sided (less)",
                             "two-sided": "two-sided"}.get(t.test.alternative or "", "not stated"),
                            ", ".join(x for x in (f"N = {t.test.n}" if t.test.n else "",
                                                  f"{t.test.n_iter} iterations" if t.test.n_iter else "") if x)
                            or "—", t.test.p, t.p_holm, t.p_bh, t.family_size, t.note)
            for t in run.reported_tests]


def heatmap_path(name: str) -> str:
    return f"assets/{name}_cosine.png"


def delta_path(before: str, after: str) -> str:
    return f"assets/{before}__{after}_delta.png"


def _citation(run: Run, repo_id: str | None, version: str | None) -> Citation:
    m = run.manifest
    year = m.date[:4] if m.date and m.date[:4].isdigit() else None
    owner, _, name = (repo_id or "").partition("/")
    first = m.authors[0].split()[-1] if m.authors else owner
    key = "_".join(p for p in (_slug(first, "_"), _slug(name or m.title, "_")[:40], year) if p)
    return Citation(key=key or "hubkit_run", title=m.title, authors=list(m.authors), year=year,
                    url=f"{HUB}/{repo_id}" if repo_id else None, version=version)


# --------------------------------------------------------------------------- text helpers


def _slug(text: str, sep: str = "-") -> str:
    return re.sub(r"[^a-z0-9]+", sep, text.lower()).strip(sep)


def _oneline(text: str | None) -> str | None:
    return " ".join(text.split()) if text and text.strip() else None


def _example(prompt: str) -> str:
    flat = " ".join(prompt.split())
    return flat if len(flat) <= EXAMPLE_CHARS else flat[:EXAMPLE_CHARS - 1].rstrip() + "…"


_HEADING = re.compile(r"^(#{1,6})(\s+.*)$")


def _embed(text: str, top: int = 3) -> str:
    """A run's markdown placed under a ``##`` card heading: a leading H1 (the document's own title)
    is dropped and the remaining headings shift so the highest becomes ``###``."""
    lines = text.strip("\n").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and re.match(r"^#\s+", lines[0]):
        lines.pop(0)
        while lines and not lines[0].strip():
            lines.pop(0)
    levels, fenced = [], False
    for ln in lines:
        if FENCE.match(ln):
            fenced = not fenced
        elif not fenced and (h := _HEADING.match(ln)):
            levels.append(len(h.group(1)))
    shift = top - min(levels) if levels else 0
    out, fenced = [], False
    for ln in lines:
        if FENCE.match(ln):
            fenced = not fenced
        elif not fenced and shift and (h := _HEADING.match(ln)):
            ln = "#" * min(6, len(h.group(1)) + shift) + h.group(2)
        out.append(ln)
    return "\n".join(out).rstrip()


def render_card(data: CardData, template_dir: str | Path | None = None) -> str:
    """The model card's text: ``card.md.j2`` (and its section partials) with ``data``."""
    return render(MAIN_TEMPLATE, data, template_dir)
