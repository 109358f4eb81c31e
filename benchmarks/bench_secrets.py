"""Recall, false positives and speed of the new scanner vs the old one and vs detect-secrets.

    python bench_secrets.py [--quick]      # prints markdown tables (``--quick``: skip the slow timings)

Recall: a planted file counts as found when the scanner reports *that* secret (our scanners: a hit of the
expected kind, on the planted line for line-addressable containers; detect-secrets: a reported value that
overlaps the planted one, so a hash it flags in the filler lines does not count as finding the key).
False positives: every hit on the clean set. detect-secrets reads plain text only, so it is measured twice:
on the files as they are, and on their decoded text (what ``corpus.decode_reference`` reads) to be fair.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import secrets_corpus as corpus  # noqa: E402

NEW = corpus.scanner_module()


def old_scanner() -> ModuleType | None:
    """The first round's scanner, from git history (commit b9487d5, hubkit/secrets.py), for the comparison."""
    import subprocess
    import types

    try:
        src = subprocess.run(["git", "show", "b9487d5:hubkit/secrets.py"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("hubkit_secrets_round1")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src.replace("from .errors import", "from hubkit.errors import"), "round1/secrets.py", "exec"),
         mod.__dict__)
    return mod


# --------------------------------------------------------------------------------------- detect-secrets


def ds_scan(paths: list[Path]) -> dict[Path, list[tuple[int, str, str]]]:
    """detect-secrets with every plugin and its default filters: (line, type, value) per file."""
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    out: dict[Path, list[tuple[int, str, str]]] = {}
    with default_settings():
        for p in paths:
            sc = SecretsCollection()
            sc.scan_file(str(p))
            out[p] = [(s.line_number, s.type, s.secret_value or "") for _, s in sc]
    return out


def decoded_copy(src: Path, rel: str, dest: Path) -> Path:
    """Write the decoded text of ``src`` under ``dest``, named with the extension of what it holds (the
    keyword rules of detect-secrets depend on it): ``run.log.gz`` → ``….decoded.log``, notebook → ``.py``."""
    inner = rel.rsplit("/", 1)[-1]
    for ext in (".gz", ".bz2", ".xz"):
        inner = inner.removesuffix(ext)
    ext = "." + inner.rsplit(".", 1)[-1] if "." in inner else ".txt"
    ext = {".zip": ".log", ".tar": ".log", ".ipynb": ".py"}.get(ext, ext)
    out = dest / (rel + ".decoded" + ext)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    try:
        out.write_bytes(corpus.decode_reference(src, rel))
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, UnicodeDecodeError, json.JSONDecodeError):
        out.write_bytes(data)
    return out


# ------------------------------------------------------------------------------------------- measuring


def found_ours(hits: list[Any], p: corpus.Planted) -> bool:
    if not any(h.kind == p.kind.expect for h in hits):
        return False
    return not p.line or any(h.line == p.line for h in hits if h.kind == p.kind.expect)


def found_ds(secrets: list[tuple[int, str, str]], p: corpus.Planted, line: int) -> bool:
    """On the planted line (its plugins may report only part of a value: the GitHub one reports ``ghp``),
    or a reported value overlapping the planted one (notebook JSON lines are not the text's lines)."""
    v = p.value
    return any((line and n == line) or (len(s) >= 8 and (s in v or v in s)) for n, _, s in secrets)


def run(quick: bool = False) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="secret-bench-"))
    try:
        return _run(tmp, quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(tmp: Path, quick: bool) -> str:
    c = corpus.build_corpus(tmp)
    old = old_scanner()
    lines: list[str] = []
    emit = lines.append

    # --- ours and old on the files as they are
    t = time.perf_counter()
    new_hits = {p.rel: NEW.scan_files(c.planted_dir, [p.rel]) for p in c.planted}
    new_clean = NEW.scan_files(c.clean_dir, c.clean)
    t_new = time.perf_counter() - t
    old_hits: dict[str, list[Any]] = {}
    old_clean: list[Any] = []
    t_old = 0.0
    if old is not None:
        t = time.perf_counter()
        old_hits = {p.rel: old.scan_file(c.planted_dir / p.rel, p.rel) for p in c.planted}
        old_clean = [h for rel in c.clean for h in old.scan_file(c.clean_dir / rel, rel)]
        t_old = time.perf_counter() - t

    # --- detect-secrets, raw and decoded
    t = time.perf_counter()
    ds_raw = ds_scan([c.planted_dir / p.rel for p in c.planted] + [c.clean_dir / r for r in c.clean])
    t_ds = time.perf_counter() - t
    dec = tmp / "decoded"
    dec_planted = {p.rel: decoded_copy(c.planted_dir / p.rel, p.rel, dec / "planted") for p in c.planted}
    dec_clean = {r: decoded_copy(c.clean_dir / r, r, dec / "clean") for r in c.clean}
    t = time.perf_counter()
    ds_dec = ds_scan(list(dec_planted.values()) + list(dec_clean.values()))
    t_ds_dec = time.perf_counter() - t
    new_dec = {rel: NEW.scan_file(path, rel) for rel, path in dec_planted.items()}

    n = len(c.planted)

    def recall(pred: Callable[[corpus.Planted], bool], subset: list[corpus.Planted] | None = None) -> str:
        sub = c.planted if subset is None else subset
        k = sum(1 for p in sub if pred(p))
        return f"{k}/{len(sub)}"

    def ds_clean_hits(res: dict[Path, list[tuple[int, str, str]]], paths: list[Path]) -> tuple[int, int]:
        return sum(len(res[q]) for q in paths), sum(1 for q in paths if res[q])

    raw_clean_paths = [c.clean_dir / r for r in c.clean]
    dec_clean_paths = list(dec_clean.values())
    ds_raw_fp = ds_clean_hits(ds_raw, raw_clean_paths)
    ds_dec_fp = ds_clean_hits(ds_dec, dec_clean_paths)
    clean_mb = sum((c.clean_dir / r).stat().st_size for r in c.clean) / 1e6
    planted_mb = sum((c.planted_dir / p.rel).stat().st_size for p in c.planted) / 1e6

    emit(f"Corpus: {n} planted files ({len(corpus.KINDS)} kinds × {len(corpus.CONTAINERS)} containers, "
         f"{planted_mb:.1f} MB); {len(c.clean)} clean files ({clean_mb:.1f} MB).\n")
    emit("| scanner | recall (planted found) | false positives on clean set (hits / files) | corpus time |")
    emit("|---|---|---|---|")
    emit(f"| hubkit new | {recall(lambda p: found_ours(new_hits[p.rel], p))} | {len(new_clean)} / "
         f"{len({h.path.split('!')[0] for h in new_clean})} | {t_new:.2f} s |")
    if old is not None:
        emit(f"| hubkit old | {recall(lambda p: found_ours(old_hits[p.rel], p))} | {len(old_clean)} / "
             f"{len({h.path for h in old_clean})} | {t_old:.2f} s |")
    ds_raw_recall = recall(lambda p: found_ds(ds_raw[c.planted_dir / p.rel], p, p.line))
    ds_dec_recall = recall(lambda p: found_ds(ds_dec[dec_planted[p.rel]], p, p.text_line))
    emit(f"| detect-secrets, files as they are | {ds_raw_recall} | {ds_raw_fp[0]} / {ds_raw_fp[1]} | "
         f"{t_ds:.2f} s |")
    emit(f"| detect-secrets, decoded text | {ds_dec_recall} | {ds_dec_fp[0]} / {ds_dec_fp[1]} | "
         f"{t_ds_dec:.2f} s |")
    emit(f"| hubkit new, decoded text | {recall(lambda p: bool(new_dec[p.rel]))} (any hit) | — | — |")

    emit("\nRecall by container:\n")
    emit("| container | new | old | detect-secrets (as is) | detect-secrets (decoded) |")
    emit("|---|---|---|---|---|")
    for cont in corpus.CONTAINERS:
        sub = [p for p in c.planted if p.container == cont]
        emit(f"| {cont} | {recall(lambda p: found_ours(new_hits[p.rel], p), sub)} | "
             f"{recall(lambda p: found_ours(old_hits.get(p.rel, []), p), sub) if old else '—'} | "
             f"{recall(lambda p: found_ds(ds_raw[c.planted_dir / p.rel], p, p.line), sub)} | "
             f"{recall(lambda p: found_ds(ds_dec[dec_planted[p.rel]], p, p.text_line), sub)} |")

    emit("\nRecall by kind (all containers):\n")
    emit("| kind | new | old | detect-secrets (decoded) |")
    emit("|---|---|---|---|")
    for kind in corpus.KINDS:
        sub = [p for p in c.planted if p.kind is kind]
        emit(f"| {kind.name} | {recall(lambda p: found_ours(new_hits[p.rel], p), sub)} | "
             f"{recall(lambda p: found_ours(old_hits.get(p.rel, []), p), sub) if old else '—'} | "
             f"{recall(lambda p: found_ds(ds_dec[dec_planted[p.rel]], p, p.text_line), sub)} |")

    for label, res, paths in (("as they are", ds_raw, {r: c.clean_dir / r for r in c.clean}),
                              ("decoded", ds_dec, dec_clean)):
        ds_fp_types: Counter[str] = Counter()
        ds_fp_files: dict[str, set[str]] = defaultdict(set)
        for r, q in paths.items():
            for _, typ, _ in res[q]:
                ds_fp_types[typ] += 1
                ds_fp_files[typ].add(r)
        emit(f"\ndetect-secrets false positives on the clean set ({label}), by plugin:\n")
        emit("| plugin | hits | files (first 5) |")
        emit("|---|---|---|")
        for typ, k in ds_fp_types.most_common():
            emit(f"| {typ} | {k} | {', '.join(sorted(ds_fp_files[typ])[:5])} |")
    if new_clean:
        emit("\nhubkit new false positives:\n")
        emit("\n".join(f"- `{h}`" for h in new_clean))

    if not quick:
        emit("\nThroughput (best of 2, wall clock, this machine: 2 shared cores):\n")
        emit("| input | new | old | detect-secrets |")
        emit("|---|---|---|---|")
        big = tmp / "train_50mb.log"
        size = corpus.big_log(big, 50)
        emit(_speed_row(f"{size / 1e6:.0f} MB training log", big, size, old, ds_mb=5))
        tok = c.clean_dir / "model" / "tokenizer.json"
        tok_size = tok.stat().st_size
        emit(_speed_row(f"tokenizer.json, one {tok_size / 1e6:.1f} MB line", tok, tok_size, old, ds_mb=0))
        gz = tmp / "train_50mb.log.gz"
        with open(big, "rb") as fh, gzip.open(gz, "wb", compresslevel=6) as out:
            while blk := fh.read(1 << 20):
                out.write(blk)
        emit(_speed_row("same log as .log.gz (MB decompressed)", gz, size, old, ds_mb=-1))
        emit("\nBombs (new scanner, default limits):\n")
        emit("| input | time | result |")
        emit("|---|---|---|")
        for name, path in _bombs(tmp).items():
            t = time.perf_counter()
            hits = NEW.scan_file(path, path.name)
            emit(f"| {name} | {time.perf_counter() - t:.2f} s | `{'; '.join(str(h) for h in hits)}` |")
    return "\n".join(lines)


def _best(f: Callable[[], object], k: int = 2) -> float:
    best = float("inf")
    for _ in range(k):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def _speed_row(label: str, path: Path, size: int, old: ModuleType | None, ds_mb: int) -> str:
    new = size / _best(lambda: NEW.scan_file(path)) / 1e6
    old_s = f"{size / _best(lambda: old.scan_file(path)) / 1e6:.1f} MB/s" if old else "—"
    if ds_mb < 0:
        ds = "n/a (no archives)"
        old_s = "0 (skipped as binary)" if old else "—"
    else:
        part = path
        part_size = size
        if ds_mb and size > ds_mb * 1_000_000:
            part = path.with_suffix(".part.log")
            with open(path, "rb") as fh:
                part.write_bytes(fh.read(ds_mb * 1_000_000))
            part_size = part.stat().st_size
        ds_t = _best(lambda: ds_scan([part]), 1)
        ds = f"{part_size / ds_t / 1e6:.2f} MB/s" + (f" (first {ds_mb} MB)" if part is not path else "")
    return f"| {label} | {new:.1f} MB/s | {old_s} | {ds} |"


def _bombs(tmp: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    zeros = gzip.compress(bytes(16 << 20), compresslevel=9)
    out["1 GiB of zeros, gzip (1 MB file)"] = tmp / "zeros.log.gz"
    out["1 GiB of zeros, gzip (1 MB file)"].write_bytes(zeros * 64)
    line = b"step 1 | loss 0.5 | tokens/s 1234\n"
    text = gzip.compress(line * ((16 << 20) // len(line)), compresslevel=9)
    out["1 GiB of log text, gzip (2.6 MB file)"] = tmp / "text.log.gz"
    out["1 GiB of log text, gzip (2.6 MB file)"].write_bytes(text * 64)
    zpath = tmp / "one_member.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z, z.open("a.log", "w", force_zip64=True) as fh:
        for _ in range(1024):
            fh.write(bytes(1 << 20))
    out["zip, one 1 GiB member of zeros"] = zpath
    many = tmp / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(12_000):
            z.writestr(f"f{i}.txt", b"")
    out["zip, 12 000 empty members"] = many
    d = b"hello\n"
    for _ in range(10):
        d = gzip.compress(d)
    out["gzip nested 10 deep"] = tmp / "nested.gz"
    out["gzip nested 10 deep"].write_bytes(d)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inner.zip", zpath.read_bytes())
    out["zip holding the 1 GiB zip"] = tmp / "outer.zip"
    out["zip holding the 1 GiB zip"].write_bytes(buf.getvalue())
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="recall and false positives only")
    print(run(quick=ap.parse_args().quick))
