"""PEFT LoRA adapter folders: what the card reports about them, read from the files, and the provenance check.

Seed 004's lesson: a plan reused an EM adapter whose ``adapter_config.json`` said
``base_model_name_or_path = /workspace/marker_transfer_issue125/confab_zlt_merged`` - it was trained on a
marker-coupled merge, not on the base the plan named - and the plan also stated ``use_rslora=True`` where
the file said ``false``. So every reported hyperparameter comes from the file (with PEFT's default named
when the file leaves it out), and an adapter whose recorded base is not the declared base is refused.

Base comparison: a local path (``/workspace/...``, ``./x``, ``~/x``, ``C:\\x``) never matches a Hub id;
otherwise the two Hub ids must be equal, case-sensitively, after stripping trailing slashes. A relative folder
that happens to be spelled like the Hub id cannot be told apart from it (the config holds a bare string).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubkit.errors import ArtifactError, PickleRefused, ProvenanceError
from hubkit.formats.safefiles import FileHashes, file_hashes, read_json_file
from hubkit.formats.safetensors_io import safetensors_header

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# LoraConfig defaults (peft 0.21); named in the report when the file does not set a field
PEFT_DEFAULTS: dict[str, Any] = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "use_rslora": False,
                                 "target_modules": None, "use_dora": False, "bias": "none"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(\.[A-Za-z0-9_]+)?\.weight$")


@dataclass
class AdapterInfo:
    """A LoRA adapter as its files describe it (never as a plan remembers it)."""

    name: str
    path: str  # run-relative folder
    base_model: str  # base_model_name_or_path from the file (equal to the declared base, or refused)
    peft_type: str
    task_type: str | None
    r: int
    lora_alpha: float
    use_rslora: bool
    lora_dropout: float
    target_modules: list[str] | str | None  # a list (sorted: PEFT writes a set in arbitrary order) or a regex
    use_dora: bool
    bias: str
    modules_to_save: list[str] | None
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    revision: str | None
    peft_version: str | None
    defaults: list[str]  # fields absent from the file, reported with PEFT's default
    n_lora_tensors: int
    weight_ranks: list[int]  # distinct ranks found in the weights
    weight_modules: list[str]  # distinct module names carrying lora_A/lora_B (last path component)
    weight_dtypes: list[str]
    files: list[FileHashes] = field(default_factory=list)

    @property
    def scaling(self) -> float:
        """LoRA's multiplier on B@A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (
            "name", "path", "base_model", "peft_type", "task_type", "r", "lora_alpha", "use_rslora",
            "lora_dropout", "target_modules", "use_dora", "bias", "modules_to_save", "rank_pattern",
            "alpha_pattern", "revision", "peft_version", "defaults", "n_lora_tensors", "weight_ranks",
            "weight_modules", "weight_dtypes")}
        out["scaling"] = self.scaling
        out["files"] = [f.to_json() for f in self.files]
        return out


def looks_local(ref: str) -> bool:
    """A filesystem path rather than a Hub id: absolute, home-relative, dot-relative, Windows, backslashes."""
    return (ref.startswith(("/", "~", "./", "../", "\\")) or ref in (".", "..") or "\\" in ref
            or bool(re.match(r"^[A-Za-z]:[\\/]", ref)))


def is_hub_id(ref: str) -> bool:
    """``owner/name`` or a legacy single-segment id (``gpt2``), as the Hub spells them."""
    return bool(_HUB_ID.match(ref)) and ".." not in ref


def same_base(recorded: str, declared: str) -> bool:
    """True when the adapter's recorded base is the declared Hub id (module docstring)."""
    if looks_local(recorded) or looks_local(declared):
        return False
    return recorded.rstrip("/") == declared.rstrip("/")


def _field(cfg: dict[str, Any], key: str, kinds: tuple[type, ...], where: str, defaults: list[str]) -> Any:
    if key not in cfg:
        defaults.append(key)
        return PEFT_DEFAULTS.get(key)
    v = cfg[key]
    if v is None and PEFT_DEFAULTS.get(key, 0) is None:
        return None
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ArtifactError(f"{where}: {key}: must be {names}, got {type(v).__name__} {v!r}")
    return v


def read_adapter(folder: str | Path, declared_base: str, where: str, *,
                 name: str | None = None) -> AdapterInfo:
    """Read and check a PEFT LoRA folder: ``adapter_config.json`` (bounded, strict JSON) + safetensors
    weights.

    Refuses (one line naming the file): a recorded base that is not ``declared_base``
    (:class:`~hubkit.errors.ProvenanceError`); ``adapter_model.bin`` or any other pickle file in the folder
    (:class:`~hubkit.errors.PickleRefused`); a missing/malformed config or weights, a non-LoRA adapter, or
    weights whose ranks or modules disagree with the config (:class:`~hubkit.errors.ArtifactError`).
    ``where`` is the run-relative folder shown in messages.
    """
    folder = Path(folder)
    where = where.rstrip("/")
    name = name or folder.name
    if not folder.is_dir():
        raise ArtifactError(f"{where}: adapter '{name}': not a folder")
    inside = folder.resolve()
    for f in sorted(folder.iterdir()):
        if f.is_symlink() and not f.resolve().is_relative_to(inside):
            raise ArtifactError(f"{where}/{f.name}: a symlink out of the adapter folder (copy the file in)")
    cfg_where = f"{where}/{CONFIG}"
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise ArtifactError(f"{cfg_where}: missing (a PEFT adapter folder has {CONFIG} and {WEIGHTS})")
    cfg = read_json_file(cfg_path, cfg_where, error=ArtifactError)
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{cfg_where}: must be a JSON object, got {type(cfg).__name__}")

    if not isinstance(declared_base, str) or not is_hub_id(declared_base.rstrip("/")):
        raise ProvenanceError(
            f"{cfg_where}: adapter '{name}': declared base {declared_base!r} is not a Hub id")
    base = cfg.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        what = "missing" if base is None else f"{type(base).__name__} {base!r}, not a model id"
        raise ProvenanceError(f"{cfg_where}: base_model_name_or_path: {what}, so adapter '{name}' cannot be "
                              f"shown to belong to the declared base '{declared_base}'")
    if not same_base(base, declared_base):
        why = " (a local path never matches a Hub id)" if looks_local(base) else ""
        raise ProvenanceError(
            f"{cfg_where}: base_model_name_or_path: '{base}' is not the declared base "
            f"'{declared_base}'{why}; "
            f"adapter '{name}' was trained on another checkpoint, and applying it to the declared base would "
            "not reproduce the run")

    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise ArtifactError(f"{cfg_where}: peft_type: {peft_type!r}; hubkit describes LoRA adapters only")
    defaults: list[str] = []
    r = _field(cfg, "r", (int,), cfg_where, defaults)
    if r < 1:
        raise ArtifactError(f"{cfg_where}: r: must be >= 1, got {r}")
    alpha = _field(cfg, "lora_alpha", (int, float), cfg_where, defaults)
    dropout = _field(cfg, "lora_dropout", (int, float), cfg_where, defaults)
    if not (math.isfinite(alpha) and 0 <= dropout < 1):
        raise ArtifactError(f"{cfg_where}: lora_alpha {alpha!r} / lora_dropout {dropout!r} out of range")
    targets = _field(cfg, "target_modules", (list, str), cfg_where, defaults)
    if isinstance(targets, list):
        if not all(isinstance(t, str) for t in targets):
            raise ArtifactError(f"{cfg_where}: target_modules: must be a list of strings or a regex string")
        targets = sorted(targets)
    modules_to_save = cfg.get("modules_to_save")
    if modules_to_save is not None and not (isinstance(modules_to_save, list)
                                            and all(isinstance(m, str) for m in modules_to_save)):
        raise ArtifactError(f"{cfg_where}: modules_to_save: must be a list of strings or null")
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    if not isinstance(rank_pattern, dict) or not isinstance(alpha_pattern, dict):
        raise ArtifactError(f"{cfg_where}: rank_pattern / alpha_pattern: must be objects")
    info = AdapterInfo(
        name=name, path=where, base_model=base, peft_type=peft_type,
        task_type=_opt_str(cfg, "task_type", cfg_where), r=r, lora_alpha=alpha,
        use_rslora=_field(cfg, "use_rslora", (bool,), cfg_where, defaults), lora_dropout=float(dropout),
        target_modules=targets, use_dora=_field(cfg, "use_dora", (bool,), cfg_where, defaults),
        bias=_field(cfg, "bias", (str,), cfg_where, defaults), modules_to_save=modules_to_save,
        rank_pattern=dict(sorted(rank_pattern.items())), alpha_pattern=dict(sorted(alpha_pattern.items())),
        revision=_opt_str(cfg, "revision", cfg_where), peft_version=_opt_str(cfg, "peft_version", cfg_where),
        defaults=sorted(defaults), n_lora_tensors=0, weight_ranks=[], weight_modules=[], weight_dtypes=[],
    )
    _check_files(folder, where, info)
    return info


def _opt_str(cfg: dict[str, Any], key: str, where: str) -> str | None:
    v = cfg.get(key)
    if v is not None and not isinstance(v, str):
        raise ArtifactError(f"{where}: {key}: must be a string or null, got {type(v).__name__}")
    return v


def _check_files(folder: Path, where: str, info: AdapterInfo) -> None:
    """Refuse pickles, read the weights' header, hash every file (sorted, run-relative names)."""
    paths: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        paths.extend(Path(root) / f for f in sorted(files))
    rel = {p: p.relative_to(folder).as_posix() for p in paths}
    if (folder / PICKLE_WEIGHTS).is_file():
        raise PickleRefused(
            f"{where}/{PICKLE_WEIGHTS}: a pickle (torch.save), which can run code when loaded; hubkit "
            f"publishes {WEIGHTS} only: re-save with save_pretrained(..., safe_serialization=True) and "
            "delete the .bin")
    pickles = [rel[p] for p in paths if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise PickleRefused(f"{where}/{pickles[0]}: a pickle-format file in adapter '{info.name}' would be "
                            "published; remove it (e.g. training_args.bin, optimizer.pt)")
    wpath = folder / WEIGHTS
    wwhere = f"{where}/{WEIGHTS}"
    if not wpath.is_file():
        raise ArtifactError(f"{wwhere}: missing (adapter '{info.name}' has no safetensors weights)")
    _, entries, _ = safetensors_header(wpath, wwhere, error=ArtifactError, dtypes=_WEIGHT_DTYPES)
    ranks: set[int] = set()
    modules: set[str] = set()
    n = 0
    for key, t in entries.items():
        m = _LORA_KEY.match(key)
        if not m:
            continue
        if len(t.shape) != 2:
            raise ArtifactError(f"{wwhere}: tensor '{key}': shape {list(t.shape)}, a LoRA factor is 2-D")
        n += 1
        ranks.add(t.shape[0] if m["ab"] == "A" else t.shape[1])
        modules.add(m["module"].rsplit(".", 1)[-1])
    if n == 0:
        raise ArtifactError(f"{wwhere}: no lora_A / lora_B tensors")
    if not info.rank_pattern and ranks != {info.r}:
        raise ArtifactError(f"{wwhere}: the weights have rank {', '.join(map(str, sorted(ranks)))} but "
                            f"{CONFIG} says r={info.r}")
    if isinstance(info.target_modules, list):
        stray = sorted(modules - set(info.target_modules))
        if stray:
            raise ArtifactError(f"{wwhere}: LoRA weights on '{stray[0]}', which {CONFIG}'s target_modules "
                                f"{info.target_modules} does not name")
    info.n_lora_tensors = n
    info.weight_ranks = sorted(ranks)
    info.weight_modules = sorted(modules)
    info.weight_dtypes = sorted({t.dtype for t in entries.values()})
    info.files = [file_hashes(p, f"{where}/{rel[p]}") for p in paths]
