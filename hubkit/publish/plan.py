"""The publish plan: what one commit would add, change and delete against the remote state (what
``--dry-run`` prints), decided before anything is written."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from hubkit.formatting import human_size
from hubkit.hub import RemoteFile, RemoteState
from hubkit.publish.repo_tree import Package, PackageFile


@dataclass
class FileChange:
    path: str
    size: int
    kind: str
    old_size: int | None = None


@dataclass
class PublishPlan:
    """The commit a publish would make, before anything is written (what ``--dry-run`` prints)."""

    repo_id: str
    repo_type: str
    branch: str
    version: str
    parent: str | None
    create_repo: bool
    create_branch: bool
    create_pr: bool
    private: bool
    adds: list[FileChange] = field(default_factory=list)
    changes: list[FileChange] = field(default_factory=list)
    deletes: list[FileChange] = field(default_factory=list)
    unchanged: list[FileChange] = field(default_factory=list)
    summary: str = ""
    card: str = ""
    nothing_changed: bool = False
    current_version: str | None = None  # the version already there when nothing changed
    tag_missing: str | None = None  # a version to tag without committing (repair)
    notes: list[str] = field(default_factory=list)
    dataset: DatasetPlanView | None = None

    @property
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.adds + self.changes)

    def render(self) -> str:
        """Human-readable plan: files to add, change and delete with sizes, the version, the card."""
        lines = []
        where = f"{self.repo_id}@{self.branch}"
        if self.nothing_changed:
            lines.append(f"{where}: nothing changed; {self.current_version} is current")
            if self.tag_missing:
                lines.append(f"would tag {self.tag_missing} (its commit is there, the tag is missing)")
        else:
            what = "open a pull request with" if self.create_pr else "commit"
            lines.append(f"{where}: would {what} {self.version}"
                         + (f" on top of {self.parent[:12]}" if self.parent else ""))
            if self.create_repo:
                lines.append(f"would create the {'private ' if self.private else ''}{self.repo_type} repo "
                             f"{self.repo_id}")
            if self.create_branch:
                lines.append(f"would create branch {self.branch} from main")
            lines.append(f"summary: {self.summary}")
            for sign, items in (("+", self.adds), ("~", self.changes), ("-", self.deletes)):
                for f in items:
                    size = human_size(f.size) if sign != "-" else f"was {human_size(f.size)}"
                    lines.append(f"  {sign} {f.path} ({size})")
            lines.append(f"  = {len(self.unchanged)} unchanged file(s) stay as they are")
            lines.append(f"{len(self.adds)} to add, {len(self.changes)} to change, {len(self.deletes)} to delete; "
                         f"{human_size(self.upload_bytes)} to upload at most")
        for n in self.notes:
            lines.append(f"note: {n}")
        if self.dataset is not None:
            lines.extend(self.dataset.lines())
        if self.card:
            lines += ["", "----- README.md -----", self.card.rstrip("\n"), "----- end of README.md -----"]
        return "\n".join(lines)


@dataclass
class DatasetPlanView:
    """The companion dataset's part of a plan (filled by :mod:`hubkit.dataset`)."""

    repo_id: str
    configs: list[str]
    adds: list[FileChange] = field(default_factory=list)
    changes: list[FileChange] = field(default_factory=list)
    deletes: list[FileChange] = field(default_factory=list)
    create_repo: bool = False

    @property
    def nothing_changed(self) -> bool:
        return not (self.adds or self.changes or self.deletes)

    def lines(self) -> list[str]:
        head = f"companion dataset {self.repo_id} ({len(self.configs)} config(s): {', '.join(self.configs)})"
        if self.nothing_changed:
            return [f"{head}: unchanged"]
        out = [f"{head}:" + (" would create the repo" if self.create_repo else "")]
        for sign, items in (("+", self.adds), ("~", self.changes), ("-", self.deletes)):
            out += [f"  {sign} {f.path} ({human_size(f.size)})" for f in items]
        return out


def git_blob_sha1(pf: PackageFile) -> str:
    """The git oid the Hub reports for a regular (non-LFS) file; streamed for files on disk."""
    h = hashlib.sha1(f"blob {pf.size}\0".encode())
    if pf.data is not None:
        h.update(pf.data)
    else:
        with open(pf.source, "rb") as fh:  # type: ignore[arg-type]
            while chunk := fh.read(8 * 1024 * 1024):
                h.update(chunk)
    return h.hexdigest()


def same_content(pf: PackageFile, remote: RemoteFile | None) -> bool:
    """True when the remote file already holds these bytes: LFS by sha256, regular files by git oid."""
    if remote is None or remote.size != pf.size:
        return False
    if remote.sha256 is not None:
        return remote.sha256 == pf.sha256
    return remote.blob_id == git_blob_sha1(pf)


def diff_package(package: Package, state: RemoteState) -> tuple[list[FileChange], list[FileChange],
                                                                 list[FileChange], list[FileChange]]:
    """(adds, changes, deletes, unchanged). Deletes are limited to what an earlier hubkit publish owned."""
    adds, changes, unchanged = [], [], []
    for pf in package.files:
        remote = state.files.get(pf.path)
        if remote is None:
            adds.append(FileChange(pf.path, pf.size, pf.kind))
        elif same_content(pf, remote):
            unchanged.append(FileChange(pf.path, pf.size, pf.kind, remote.size))
        else:
            changes.append(FileChange(pf.path, pf.size, pf.kind, remote.size))
    new_paths = {pf.path for pf in package.files}
    deletes = [FileChange(p, state.files[p].size, "deleted") for p in sorted(state.owned)
               if p in state.files and p not in new_paths and p != ".gitattributes"]
    return adds, changes, deletes, unchanged


