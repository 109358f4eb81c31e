"""``hubkit init``: draft a hubkit.yaml by looking at a run directory.

It fills what the files say (directions and their shapes, rankings, contrast pairs, per-task tables,
the report, a weights folder) and writes ``TODO`` where only the author knows (status, the layer of
a single vector, the baseline). A draft with a TODO left does not validate, on purpose.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hubkit.errors import HubkitError, ManifestError
from hubkit.formats.atomic import write_bytes
from hubkit.formats.tables import read_csv
from hubkit.run.manifest import MANIFEST_NAME, STATUSES, TODO

SUMMARY_ORDER = ("RESULTS_FINAL.md", "RESULTS.md", "README.md")
REPORTS = ("TASK.md", "RESEARCH.md", "PLAN.md", "RESULTS.md", "RESULTS_FINAL.md", "VERIFY.md")


@dataclass
class Found:
    directions: list[dict] = field(default_factory=list)
    rankings: list[str] = field(default_factory=list)
    contrast: list[tuple[str, str]] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)  # (arm id, file)
    weights: list[str] = field(default_factory=list)
    summary_file: str | None = None
    reports: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    base_model: str | None = None
    vector_sets: list[dict] = field(default_factory=list)  # {name, file, members, rows, d}
    adapters: list[str] = field(default_factory=list)  # folders with adapter_config.json
    data: list[str] = field(default_factory=list)


def _files(root: Path) -> list[str]:
    """The run's files, as the inventory sees them: links that lead outside the run are never read."""
    out = []
    top = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__"
                             and not (Path(dirpath) / d).is_symlink())
        out += [(Path(dirpath) / f).relative_to(root).as_posix() for f in sorted(filenames)
                if (Path(dirpath) / f).resolve().is_relative_to(top)]
    return sorted(out)


def _weight_dirs(root: Path, files: list[str]) -> list[str]:
    dirs = set()
    for f in files:
        p = PurePosixPath(f)
        if p.name == "config.json" and str(p.parent) != ".":
            folder = root / p.parent
            if any(folder.glob("*.safetensors")):
                dirs.add(str(p.parent) + "/")
    return sorted(dirs)


def _pair_labels(a: str, b: str) -> tuple[str, str]:
    """``persona_capable`` / ``persona_cautious`` → ``capable`` / ``cautious``."""
    sa, sb = PurePosixPath(a).stem, PurePosixPath(b).stem
    i = 0
    while i < min(len(sa), len(sb)) and sa[i] == sb[i]:
        i += 1
    cut = max(sa.rfind("_", 0, i + 1), sa.rfind("-", 0, i + 1)) + 1
    return sa[cut:] or sa, sb[cut:] or sb


def _arm_id(path: str) -> str:
    p = PurePosixPath(path)
    stem = p.stem
    if stem in ("master_summary", "summary", "results") and str(p.parent) not in (".", "results"):
        stem = p.parent.name
    return stem.replace("_full_tbench", "").replace("_results", "")


def discover(run_dir: Path) -> Found:
    """Look at every file once and sort what hubkit recognises."""
    found = Found()
    files = _files(run_dir)
    found.weights = _weight_dirs(run_dir, files)
    found.adapters = sorted(str(PurePosixPath(f).parent) for f in files
                            if PurePosixPath(f).name == "adapter_config.json" and "/" in f)
    in_weights = tuple(found.weights) + tuple(a + "/" for a in found.adapters)
    for w in found.weights:
        try:
            cfg = json.loads((run_dir / w / "config.json").read_text())
            name = cfg.get("_name_or_path")
            if isinstance(name, str) and name.count("/") == 1 and not name.startswith(("/", ".")):
                found.base_model = name
        except (OSError, ValueError):
            pass
    jsonl = []
    for f in files:
        if f.startswith(in_weights) or f == MANIFEST_NAME:
            continue
        p = PurePosixPath(f)
        low = p.name.lower()
        if p.suffix in (".pt", ".pth", ".safetensors", ".npy") and (
                p.parts[0] == "vectors" or "dir" in low or _HARMLESS.search(low)):
            vs = _as_vector_set(run_dir, f)
            if vs is not None:
                found.vector_sets.append(vs)
            else:
                found.directions.append(_describe_direction(run_dir, f))
        elif p.suffix == ".csv":
            try:
                cols, rows = read_csv(run_dir / f, f)
            except HubkitError:
                continue
            if _is_ranking(cols, rows):
                found.rankings.append(f)
            elif "task" in cols and ("passed" in cols or "reward" in cols):
                found.results.append((_arm_id(f), f))
        elif p.suffix == ".jsonl" and p.parts[0] not in ("results", "notes", "data"):
            jsonl.append(f)
        elif p.parts[0] == "scripts":
            found.scripts.append(f)
        elif p.parts[0] == "notes":
            found.notes.append(f)
        elif p.name in REPORTS:
            found.reports.append(f)
        elif p.suffix in (".npz", ".bin") and (run_dir / f).stat().st_size > 1024 * 1024:
            found.excludes.append(f)
        elif p.parts[0] == "data" and p.suffix in (".jsonl", ".json", ".csv", ".parquet", ".txt", ".tsv"):
            found.data.append(f)
    found.summary_file = next((s for s in SUMMARY_ORDER if s in files), None)
    for i in range(0, len(jsonl) - 1, 2):
        la, lb = _pair_labels(jsonl[i], jsonl[i + 1])
        found.contrast += [(jsonl[i], la), (jsonl[i + 1], lb)]
    if len(jsonl) % 2:
        found.contrast.append((jsonl[-1], PurePosixPath(jsonl[-1]).stem))
    return found


_HARMLESS = re.compile(r"harmless|benign|good_mean|mean_good|comply_mean|mean_comply")


_SWEEP_COLUMNS = {"alpha", "scale", "strength", "coef", "coefficient", "passes", "n", "pass_rate", "arm"}


def _is_ranking(cols: list[str], rows: list[tuple[int, dict[str, str]]]) -> bool:
    """A per-layer ranking has one row per layer and metric columns; a sweeps table (a layer column, but
    several rows per layer, or alpha / passes columns) is not one."""
    if "layer" not in cols or _SWEEP_COLUMNS & set(cols):
        return False
    layers = [r.get("layer") for _, r in rows]
    return len(layers) == len(set(layers)) and len(cols) > 1


def _as_vector_set(run_dir: Path, rel: str) -> dict | None:
    """A ``{member: [n_layers, d]}`` file (member names, not layer numbers, as keys) is a vector set."""
    from hubkit.formats.vector_sets import read_vector_set

    try:  # the rows' layers are the author's to say: read with placeholder numbers to learn the shape
        vs = read_vector_set(run_dir / rel, name="draft", display=rel, layers=list(range(_rows(run_dir / rel))))
    except (HubkitError, ValueError, OSError):
        return None
    if len(vs.members) < 2 or all(m.lstrip("layer._L").isdigit() for m in vs.members):
        return None
    name = "_".join(PurePosixPath(rel).with_suffix("").parts[-2:]).replace("-", "_")
    return {"name": name, "file": rel, "members": len(vs.members), "rows": len(vs.layers), "d": vs.d}


def _rows(path: Path) -> int:
    """Rows per member of a ``{member: [n_layers, d]}`` .pt file (0 when it is not one)."""
    if path.suffix not in (".pt", ".pth"):
        return 0
    import torch

    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - not a safe tensor file: the direction reader says why
        return 0
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) and v.dim() == 2 for v in obj.values()):
        return int(next(iter(obj.values())).shape[0])
    return 0


def _describe_direction(run_dir: Path, rel: str) -> dict:
    """Name, shape and the layer TODO for one direction file; unreadable files are drafted with a note."""
    name = PurePosixPath(rel).stem
    for suffix in ("_dir", "-dir", "_direction", "_vector", "_vec"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    if name in ("dir", "direction", "vector", "vec"):
        name = "direction"
    entry: dict = {"name": name, "file": rel, "note": None, "convention": "block",
                   "harmless": bool(_HARMLESS.search(PurePosixPath(rel).name.lower()))}
    try:
        from hubkit.formats.directions import inspect_direction

        layers, d = inspect_direction(run_dir / rel, display=rel)
        if layers is None:
            entry["note"] = f"one [{d}] vector: set the layer it was taken from"
        else:
            entry["note"] = f"{len(layers)} layers {layers[0]}–{layers[-1]}, d={d}: pick the layer"
            if layers[0] == 1 and 0 not in layers:
                entry["convention"] = "hidden_states"
                entry["note"] += "; numbered from 1, so hidden_states convention assumed: check"
    except HubkitError as e:
        entry["note"] = f"could not read it: {e}"
    return entry


def draft_manifest(run_dir: str | Path) -> tuple[str, list[str]]:
    """The draft's YAML text and the list of fields left as TODO."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ManifestError(f"{run_dir}: not a directory")
    f = discover(run_dir)
    todo: list[str] = ["status"]
    q = json.dumps
    title = run_dir.resolve().name.replace("_", " ").replace("-", " ").strip() or "untitled run"
    lines = [
        "# hubkit.yaml drafted by `hubkit init`: fill every TODO, then run `hubkit validate`.",
        f"title: {q(title)}",
        "repo_id: null                    # owner/name: the default publish target",
        "date: null",
    ]
    if f.base_model:
        lines.append(f"base_model: {q(f.base_model)}")
    else:
        lines.append(f"base_model: {TODO}                # the Hub id of the model the run used")
        todo.append("base_model")
    lines += [
        "base_model_revision: null",
        "license: null",
        "tags: []",
        f"status: {TODO}                    # {' | '.join(STATUSES)}",
        "status_note: null                # one sentence for the banner",
    ]
    if f.summary_file:
        lines.append(f"summary_file: {q(f.summary_file)}")
    if f.directions:
        lines.append("directions:")
        for i, d in enumerate(f.directions):
            lines += [f"  - name: {q(d['name'])}", f"    file: {q(d['file'])}",
                      f"    layer: {TODO}                # {d['note']}",
                      f"    layer_convention: {d['convention']}      # block | hidden_states (0 = embeddings)"]
            todo.append(f"directions[{i}].layer")
    if f.rankings:
        lines.append("ranking:" + "".join(f"\n  - {q(r)}" for r in f.rankings))
    if f.contrast:
        lines.append("contrast:")
        lines += [f"  - {{file: {q(c)}, label: {q(label)}}}" for c, label in f.contrast]
    if f.results:
        base = next((a for a, _ in f.results if "base" in a.lower()), None)
        lines += ["evaluations:", f"  - name: {TODO}", f"    baseline: {q(base) if base else TODO}",
                  "    alternative: greater         # greater | less | two-sided: H1 of each arm vs the baseline",
                  "    arms:"]
        todo.append("evaluations[0].name")
        if not base:
            todo.append("evaluations[0].baseline")
        lines += [f"      - {{id: {q(a)}, per_task: {q(path)}}}" for a, path in f.results]
    if f.vector_sets:
        lines.append("vector_sets:")
        for i, s in enumerate(f.vector_sets):
            lines += [f"  - name: {q(s['name'])}", f"    file: {q(s['file'])}",
                      f"    layers: {TODO}                # {s['members']} members × {s['rows']} rows, d={s['d']}: "
                      "the layer of each row", "    layer_convention: hidden_states"]
            todo.append(f"vector_sets[{i}].layers")
        lines.append("# compare: [{before: SET, after: SET}]   # pairs over the same members and layers")
    if f.adapters:
        lines.append("adapters:" + "".join(f"\n  - {{name: {q(PurePosixPath(a).name)}, path: {q(a)}}}"
                                           for a in f.adapters))
    if f.data:
        lines.append("data:" + "".join(f"\n  - {{file: {q(d)}, description: {TODO}}}" for d in f.data))
        todo += [f"data[{i}].description" for i in range(len(f.data))]
    if f.weights:
        lines.append(f"weights: {{path: {q(f.weights[0])}, publish: false}}")
    ablation = [d for d in f.directions if not d["harmless"]]
    harmless = [d for d in f.directions if d["harmless"]]
    if f.weights and ablation:
        lines.append(f"regenerate: {{direction: {q(ablation[0]['name'])}, "
                     "targets: [embed_tokens, attn_out, mlp_down]"
                     + (f", project_out: {q(harmless[0]['name'])}" if harmless else "") + "}")
    elif harmless and ablation:
        lines.append(f"# regenerate: {{direction: {q(ablation[0]['name'])}, project_out: {q(harmless[0]['name'])}}}"
                     "   # projected abliteration: the harmless mean found next to the direction")
    lines.append("caveats: []")
    if f.excludes:
        lines.append("exclude:" + "".join(f"\n  - {q(e)}" for e in f.excludes) + "   # large arrays")
    found = [f"{len(f.scripts)} scripts", f"{len(f.notes)} notes", f"reports: {', '.join(f.reports) or 'none'}"]
    lines.append(f"# also found (published as they are): {'; '.join(found)}")
    return "\n".join(lines) + "\n", todo


def write_draft(run_dir: str | Path, *, force: bool = False) -> tuple[Path, list[str]]:
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_NAME
    if path.exists() and not force:
        raise ManifestError(f"{path}: already exists (use --force to overwrite)")
    text, todo = draft_manifest(run_dir)
    if path.is_symlink():  # replaced by the draft, never written through
        path.unlink()
    write_bytes(path, text.encode("utf-8"))
    return path, todo
