"""The package: exactly the tree a publish commits, and ``hubkit.json`` describing it.

``build_package`` is pure apart from reading the run (and the hash cache); ``stage`` writes the tree
beside the target and renames it into place, so a failure never leaves half a tree. Nothing here
embeds a timestamp: the same run gives byte-identical trees.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubkit import __version__
from hubkit.errors import HubkitError
from hubkit.formats.atomic import staging_dir
from hubkit.formats.hashing import HashCache, sha256_bytes
from hubkit.formats.hubjson import (
    CARD,
    HUBKIT_JSON,
    DirectionRecord,
    FileRecord,
    HistoryEntry,
    HubJson,
    RegenerateRecord,
)
from hubkit.publish.related import cross_run_geometry
from hubkit.run.kinds import kinds
from hubkit.run.kinds.directions import canonical_path
from hubkit.run.run import Run


@dataclass
class PackageFile:
    path: str
    size: int
    sha256: str
    kind: str
    source: Path | None = None  # a file of the run, copied as is
    data: bytes | None = None  # generated content (card, canonical vectors, plots, hubkit.json)

    def read(self) -> bytes:
        return self.data if self.data is not None else Path(self.source).read_bytes()  # type: ignore[arg-type]


@dataclass
class Package:
    files: list[PackageFile]
    meta: HubJson  # the content of hubkit.json
    notes: list[str] = field(default_factory=list)

    def file(self, path: str) -> PackageFile | None:
        return next((f for f in self.files if f.path == path), None)

    def generated(self) -> list[tuple[str, bytes]]:
        """``(path, bytes)`` of every file hubkit wrote itself (what the run's own scan has not seen)."""
        return [(f.path, f.data) for f in self.files if f.data is not None]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def replace_file(self, path: str, data: bytes) -> None:
        """Swap a generated file's bytes and keep hubkit.json's file list (and its bytes) in step."""
        pf = self.file(path)
        if pf is None or path == HUBKIT_JSON:
            raise KeyError(path)
        pf.data, pf.size, pf.sha256, pf.source = data, len(data), sha256_bytes(data), None
        entry = self.meta.file(path)
        if entry is not None:
            entry.size, entry.sha256 = pf.size, pf.sha256
        blob = self.meta.to_bytes()
        hj = self.file(HUBKIT_JSON)
        if hj is not None:
            hj.data, hj.size, hj.sha256 = blob, len(blob), sha256_bytes(blob)


# --------------------------------------------------------------------------- building


RUN_README = "README.run.md"


def direction_entries(run: Run) -> list[DirectionRecord]:
    entries = []
    for ds in run.directions:
        spec = run.manifest.direction(ds.name)
        entries.append(DirectionRecord(
            name=ds.name,
            file=spec.file if spec else ds.source,
            canonical=canonical_path(ds.name),
            layers=ds.layer_ids,
            d=ds.d,
            selected_layer=ds.selected_layer,
            layer_convention=ds.layer_convention,
            unit_norm=ds.unit_norm,
            method=ds.method,
        ))
    return entries


def regenerate_entry(run: Run, shards_sha256: dict[str, str] | None = None,
                     model_type: str | None = None) -> RegenerateRecord | None:
    """The recipe as hubkit.json records it (``model_type`` and shard hashes once recorded against a base)."""
    r = run.manifest.regenerate
    if r is None:
        return None
    ds = run.direction(r.direction)
    spec = r if r.layer is not None else dataclasses.replace(r, layer=ds.selected_layer)
    return RegenerateRecord(
        spec=spec,
        layer_convention=ds.layer_convention,
        base_model=run.manifest.base_model,
        base_model_revision=run.manifest.base_model_revision,
        model_type=model_type,
        shards_sha256=shards_sha256,
    )


def build_package(
    run: Run,
    *,
    template_dir: str | Path | None = None,
    version: str | None = None,
    history: list[HistoryEntry] | None = None,
    shards_sha256: dict[str, str] | None = None,
    base_model_type: str | None = None,
    repo_id: str | None = None,
    dataset_repo: str | None = None,
    hash_cache: HashCache | None = None,
    progress: bool = False,
    cross_run: list[Any] | None = None,
) -> Package:
    """Decide every file of the repo: the run's files, canonical vectors, assets, the card, hubkit.json."""
    from hubkit.cards import model_card as card

    cache = hash_cache or HashCache()
    generated: dict[str, tuple[bytes, str]] = {}
    for kind in kinds():
        for g in kind.generated(run):
            generated[g.path] = (g.data, g.kind)
    for path, data in card.build_assets(run).items():
        generated[path] = (data, "asset")

    files: dict[str, PackageFile] = {}
    run_files = [f for f in run.included_files if f.path not in generated]
    notes = list(run.notes)
    with cache.batch(sum(f.size for f in run_files), progress) as bar:
        for f in run_files:
            src = run.root / f.path
            path = RUN_README if f.path == CARD else f.path  # the card takes README.md; the run's text stays
            if path != f.path:
                notes.append(f"{CARD}: the run's own README is published as {RUN_README} (the card is {CARD})")
            files[path] = PackageFile(path, f.size, cache.sha256(src, bar), f.kind, source=src)
    for path, (data, kind) in generated.items():
        files[path] = PackageFile(path, len(data), sha256_bytes(data), kind, data=data)

    meta = HubJson(
        hubkit_version=__version__,
        version=version,
        repo_id=repo_id or run.manifest.repo_id,
        run=run.manifest.to_dict(),
        directions=direction_entries(run),
        regenerate=regenerate_entry(run, shards_sha256, base_model_type),
        dataset_repo=dataset_repo,
        history=list(history or []),
        extra={k: v for kind in kinds() for k, v in kind.records(run).items()},
    )
    body_files = sorted(files.values(), key=lambda f: f.path)
    # cosines with related runs: read from the Hub unless the caller already did (a publish builds twice)
    data = card.build_card_data(run, body_files, meta, cross_run if cross_run is not None else cross_run_geometry(run))
    readme = card.render_card(data, template_dir=template_dir).encode("utf-8")
    files[CARD] = PackageFile(CARD, len(readme), sha256_bytes(readme), "card", data=readme)

    meta.set_files([FileRecord(f.path, f.size, f.sha256, f.kind) for f in files.values()])
    blob = meta.to_bytes()
    files[HUBKIT_JSON] = PackageFile(HUBKIT_JSON, len(blob), sha256_bytes(blob), "metadata", data=blob)
    return Package(files=sorted(files.values(), key=lambda f: f.path), meta=meta, notes=notes)


# --------------------------------------------------------------------------- staging


def stage(package: Package, out: str | Path) -> Path:
    """Write the package to ``out`` atomically (beside, then rename); replaces an earlier staged tree."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise HubkitError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / HUBKIT_JSON).is_file():
            raise HubkitError(f"{out}: exists, is not empty and is not a staged hubkit tree; refusing to replace it")
    with staging_dir(out, overwrite=True) as tmp:
        for f in package.files:
            dest = tmp / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.data is not None:
                dest.write_bytes(f.data)
            else:
                shutil.copyfile(f.source, dest)  # type: ignore[arg-type]
    return out


# --------------------------------------------------------------------------- the card alone


@dataclass
class RenderedCard:
    text: str
    assets: dict[str, bytes]  # repo path -> bytes of the files the card embeds


def write_card(rendered: RenderedCard, output: str | Path) -> Path:
    """``hubkit card -o``: the card's figures beside it, then the card, each written whole (atomically); every
    place is checked first, so a clash (a file where ``assets/`` goes, a device or folder as ``-o``) writes
    nothing."""
    from hubkit.formats.atomic import write_bytes

    output = Path(output)
    if output.is_symlink() or (output.exists() and not output.is_file()):
        raise HubkitError(f"{output}: not a regular file (give a path for the card; without -o it goes to stdout)")
    for rel in rendered.assets:
        target = output.parent / rel
        folders = [f for f in target.parents if f.is_relative_to(output.parent) and f != output.parent]
        for place in [target, *folders]:
            if place.exists() and not (place.is_file() if place == target else place.is_dir()):
                raise HubkitError(f"{place}: in the way of the card's figure {rel}")
    for rel, data in rendered.assets.items():
        write_bytes(output.parent / rel, data)
    write_bytes(output, rendered.text.encode("utf-8"))
    return output


def card_for_run(run_dir: str | Path, *, template_dir: str | Path | None = None) -> RenderedCard:
    """The README a publish of ``run_dir`` would commit (same files, hashes and plots), without staging."""
    from hubkit.run.run import load_run

    package = build_package(load_run(run_dir), template_dir=template_dir)
    readme = package.file(CARD)
    assert readme is not None and readme.data is not None
    assets = {f.path: f.data for f in package.files if f.kind == "asset" and f.data is not None}
    return RenderedCard(readme.data.decode("utf-8"), assets)
