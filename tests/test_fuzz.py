"""Fuzz every reader of untrusted input: only hubkit's own errors leave them, each one line naming the file.

Readers covered: the manifest (``parse_manifest``), CSV tables (``read_csv``, ``read_ranking``,
``read_per_task``), contrast JSONL (``read_contrast``), direction files (``read_direction_file`` on
.safetensors/.npy/.pt, ``read_canonical``, ``canonical_layout``, ``canonical_vector``), safetensors headers
and checkpoint indexes (``read_header``, ``read_index``), ``hubkit.json`` (``hubjson.parse``) and a staged
repo as a source (``RepoSource.local(...).meta`` / ``.verified(rel)``).

The contract, for every input: the reader returns, or raises a :class:`~hubkit.errors.HubkitError` whose
message is one line (no ``\\n``) and contains the file's name as given to the reader. Anything else leaving a
reader (KeyError, ValueError, OverflowError, RecursionError, MemoryError, ...) is a bug. Where a blow-up is
plausible (YAML size and nesting, huge header lengths) the reader must also answer within ``HANG_S``.

Each ``@example`` is an input hypothesis once shrank a failure to: they stay here as the spec. Everything is
deterministic (``derandomize=True``, no example database) and sized for two shared CPU cores.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import functools
import io
import json
import math
import os
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hubkit.errors import HubkitError
from hubkit.formats import hubjson
from hubkit.formats.directions import canonical_layout, canonical_vector, read_canonical, read_direction_file
from hubkit.formats.safetensors_io import INDEX_NAME, SINGLE_NAME, read_header, read_index
from hubkit.formats.tables import read_csv
from hubkit.run.contrast import read_contrast
from hubkit.run.evaluations import read_per_task
from hubkit.run.manifest import MAX_MANIFEST_CHARS, parse_manifest
from hubkit.run.ranking import read_ranking
from hubkit.source import RepoSource

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
HANG_S = 3.0  # the most any reader may take on one input where a blow-up is plausible (2 shared cores)
GUARD_S = 20.0  # a safety net on every call: a hung reader fails the test instead of hanging CI


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


# --------------------------------------------------------------------------- the contract


class Hang(BaseException):
    """Not an Exception: a reader's ``except Exception`` must not turn a hang into a tidy error."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` inside the reader once ``seconds`` have passed (main thread, POSIX)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"reader still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def clean(call: Callable[[], Any], where: str, *, limit: float = GUARD_S) -> Any:
    """``call()``'s result, or None when it raised a well-formed HubkitError; anything else propagates."""
    try:
        with time_limit(limit):
            return call()
    except HubkitError as e:
        msg = str(e)
        assert "\n" not in msg, f"{type(e).__name__} message is not one line: {msg[:300]!r}"
        assert where in msg, f"{type(e).__name__} message does not name {where!r}: {msg[:300]!r}"
        return None


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hubkit-fuzz-") as d:
        yield Path(d)


# --------------------------------------------------------------------------- shared strategies

WEIRD_STRINGS = ["", " ", ".", "..", "../x", "../../etc/passwd", "/etc/passwd", "/abs/x.safetensors", "a/../b",
                 "~/x", "a\\b", "a\0b", "a\nb", "a\rb", "\t", "²", "layer.²", "٣", "layer.22", "22", "-1",
                 "layer.-1", "nan", "NaN", "inf", "-inf", "1e999", "each", "none", "block", "hidden_states",
                 "attn_out", "embed_tokens", "x" * 300, "é", "\u2028", "\ufeff", "\ud800", "0" * 64, "g" * 64,
                 "__BIGINT__"]
HUGE_INTS = [2**31, 2**53 + 1, 2**63, 2**64, 2**70, -(2**63), 10**400, -(10**400), 1 << 50, (1 << 50) + 1]
BIG_LITERAL = "1" * 5000  # more digits than int() converts: written raw where the token __BIGINT__ stood

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 100), st.sampled_from(HUGE_INTS),
                    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(WEIRD_STRINGS),
                    st.text(max_size=12))
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(WEIRD_STRINGS) | st.text(max_size=8),
                                                                 c, max_size=4),
    max_leaves=10)


def dumps_json(value: Any) -> str:
    return json.dumps(value).replace('"__BIGINT__"', BIG_LITERAL)


# =========================================================================== hubkit.yaml

MANIFEST_WHERE = "runs/fuzz/hubkit.yaml"
YAML_TOKENS = ["title: t\n", "status: positive\n", "directions:\n", "  - ", "name: d\n", "file: d.pt\n",
               "regenerate: ", "direction: d", "layer: ", "weight: ", "targets: ", "evaluations:\n", "arms: ",
               "{", "}", "[", "]", ", ", ": ", "- ", "\n", "  ", "? ", "&a ", "*a", "<<: ", "!!python/object:os.system ",
               "!!python/name:os.system ", "!!timestamp ", "!!int ", "!!float ", "!!bool ", "!!binary ", "!!set ",
               "!!omap ", "!!str ", "!!null ", "!<tag:yaml.org,2002:int> ", "'", '"', "#", "\t", "2024-13-45",
               "2024-02-30", "2024-01-01 25:61:61", "9" * 400, BIG_LITERAL, ".nan", ".inf", "~", "yes", "0x1F",
               "0o7", "0b2", "1_000", "1:20:30", "--- ", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\u2028",
               "\x85", "\ufeff", "\0", "\x07", "é", "²", "\\u00e9", "|\n", ">-\n"]
yaml_soup = st.lists(st.sampled_from(YAML_TOKENS), max_size=30).map("".join)


def check_manifest(text: str, *, limit: float = GUARD_S) -> None:
    m = clean(lambda: parse_manifest(text, MANIFEST_WHERE), MANIFEST_WHERE, limit=limit)
    if m is not None:
        assert m.title and m.status


@fuzz(500)
@given(text=st.one_of(st.text(max_size=200), yaml_soup))
@example(text="title: t\nstatus: positive\nmax_file_size_mb: " + "1" * 400)  # OverflowError, manifest.py number()
@example(text="title: t\nstatus: positive\nalpha: " + "9" * 400)
@example(text="a: " + BIG_LITERAL)  # ValueError (int digit limit) from PyYAML's constructor
@example(text="date: 2024-13-45")  # ValueError: month must be in 1..12 (PyYAML timestamp)
@example(text="!!timestamp ")  # AttributeError (PyYAML timestamp regex)
@example(text="!!bool ")  # KeyError (PyYAML bool)
@example(text="!!int ")  # IndexError
@example(text="!!float ")  # IndexError
@example(text="[" * 500)  # RecursionError (PyYAML scanner/composer)
@example(text='title: t\nstatus: positive\n"a\\nb": 1')  # unknown key: a two-line message
@example(text='title: t\nstatus: "a\\nb"')  # status: a two-line message
def test_manifest_text(text: str) -> None:
    check_manifest(text)


def _load_artifact_manifests() -> dict[str, dict[str, Any]]:
    return {p.parent.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(ARTIFACTS.glob("*/hubkit.yaml"))}


BASE_MANIFESTS = _load_artifact_manifests()


def tree_paths(node: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from tree_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from tree_paths(v, path + (i,))


def apply_mutations(tree: Any, mutations: list[tuple[tuple, str, str, Any]]) -> Any:
    """Each mutation ``(path, op, key, value)``: ``set`` the node at path to value, ``delete`` it, or ``add``
    key: value to the mapping at path (op ``wrap`` puts the node in a list). Paths that vanished are skipped."""
    tree = json.loads(json.dumps(tree, default=str))
    for path, op, key, value in mutations:
        if op == "set" and path == ():
            tree = value
            continue
        parent, node = None, tree
        try:
            for p in path:
                parent, node = node, node[p]
        except (KeyError, IndexError, TypeError):
            continue
        if op == "add" and isinstance(node, dict):
            node[key] = value
        elif parent is not None and op == "set":
            parent[path[-1]] = value
        elif parent is not None and op == "wrap":
            parent[path[-1]] = [node]
        elif parent is not None and op == "delete":
            del parent[path[-1]]
    return tree


MANIFEST_PATHS = sorted({p for m in BASE_MANIFESTS.values() for p in tree_paths(m)}, key=lambda p: (len(p), str(p)))
YAML_RAW = {"__BIGINT__": BIG_LITERAL, "__BADDATE__": "2024-13-45", "__TAG__": "!!timestamp x"}
manifest_mutation = st.tuples(st.sampled_from(MANIFEST_PATHS), st.sampled_from(["set", "delete", "add", "wrap"]),
                              st.sampled_from(["directons", "layer", "weight", "a\nb", "", "title", "x"]),
                              json_values | st.sampled_from(["__BADDATE__", "__TAG__"]))


def dump_manifest(tree: Any) -> str:
    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=10_000)
    for token, raw in YAML_RAW.items():
        text = text.replace(token, raw)
    return text


@fuzz(300)
@given(base=st.sampled_from(sorted(BASE_MANIFESTS)), mutations=st.lists(manifest_mutation, min_size=1, max_size=3))
@example(base="persona-vector", mutations=[(("regenerate",), "add", "layer", 10**400)])  # OverflowError, recipe.py _layer
@example(base="persona-vector", mutations=[(("regenerate",), "add", "weight", 10**400)])  # OverflowError, recipe.py _number
@example(base="persona-vector", mutations=[(("regenerate",), "add", "weight", {"²": 1})])  # ValueError, recipe.py _weight
@example(base="persona-vector", mutations=[(("regenerate",), "add", "targets", ["a\nb"])])  # two-line message
@example(base="persona-vector", mutations=[(("directions", 0, "name"), "set", "", "a\nb")])  # two-line regenerate.direction message
def test_manifest_mutated(base: str, mutations: list) -> None:
    check_manifest(dump_manifest(apply_mutations(BASE_MANIFESTS[base], mutations)))


def _dense_flow(n: int) -> str:
    """The most YAML tokens ``n`` characters can hold: ``a: [1,1,1,...]``."""
    k = (n - 6) // 2
    return "a: [" + "1," * k + "1]"


@pytest.mark.parametrize("name, text", [
    ("alias bomb", "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))),
    ("deep flow nesting", "a: " + "[" * 50_000 + "]" * 50_000),
    ("deep block nesting", "- " * 5_000 + "x"),
    ("deep flow mappings", "a: " + "{b: " * 3_000 + "1" + "}" * 3_000),
    ("dense flow at the size cap", _dense_flow(MAX_MANIFEST_CHARS)),  # ~20 s with the pure-Python SafeLoader
    ("one past the size cap", "#" * (MAX_MANIFEST_CHARS + 1)),
], ids=lambda v: v if len(v) < 40 else "")
def test_manifest_no_blowup(name: str, text: str) -> None:
    t0 = time.perf_counter()
    check_manifest(text, limit=HANG_S)
    assert time.perf_counter() - t0 < HANG_S, f"{name}: {time.perf_counter() - t0:.1f} s"


# =========================================================================== CSV tables

CSV_DISPLAY = "results/fuzz.csv"
CSV_COLUMNS = ["layer", "auc", "margin", "cos_x", "auc_b", "accuracy", "task", "passed", "reward", "note", "",
               " Layer ", "\ufefflayer", "lay\ner", "layer", "a\0b"]
CSV_CELLS = ["", " ", "0", "1", "2", "-1", "1.5", "22", "nan", "NaN", "inf", "-inf", "1e308", "1e309", "-1e400",
             "9" * 400, "1" * 5000, "1_000", "0x10", "true", "false", "yes", "pass", "maybe", "a\nb", "a\rb", '"',
             'a"b', "a,b", "\0", "\ufeff", "²", "٣", "é", "task-1", "task-1", "x" * 200]


def csv_table(header: list[str], rows: list[list[str]], bom: bool, crlf: bool) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    w.writerow(header)
    w.writerows(rows)
    return (("\ufeff" if bom else "") + buf.getvalue()).encode("utf-8", "surrogatepass")



def check_tables(data: bytes, threshold: float = 1.0) -> None:
    with scratch() as d:
        p = d / "fuzz.csv"
        p.write_bytes(data)
        clean(lambda: read_csv(p, CSV_DISPLAY), CSV_DISPLAY)
        ranking = clean(lambda: read_ranking(p, CSV_DISPLAY), CSV_DISPLAY)
        if ranking is not None:
            assert ranking.rows and all(r["layer"] >= 0 for r in ranking.rows)
        tasks = clean(lambda: read_per_task(p, CSV_DISPLAY, threshold), CSV_DISPLAY)
        if tasks is not None:
            assert tasks


@fuzz(300)
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
@example(data=b'"lay\ner",auc\n0,1\n')  # two-line "no 'layer' column" message
@example(data=b'layer,auc\n"0\n1",0.5\n')  # two-line "layer ... is not a non-negative integer" message
def test_tables_random(data: bytes) -> None:
    check_tables(data)


@fuzz(300)
@given(header=st.lists(st.sampled_from(CSV_COLUMNS), min_size=1, max_size=4),
       rows=st.lists(st.lists(st.sampled_from(CSV_CELLS), min_size=1, max_size=4), max_size=4),
       bom=st.booleans(), crlf=st.booleans(),
       threshold=st.sampled_from([1.0, 0.5, 0.0, math.inf, math.nan, -1e308]))
@example(header=["task", "passed"], rows=[["t", "a\nb"]], bom=False, crlf=False, threshold=1.0)
@example(header=["task", "passed"], rows=[["a\nb", "1"], ["a\nb", "1"]], bom=False, crlf=False, threshold=1.0)
def test_tables_near_valid(header: list[str], rows: list[list[str]], bom: bool, crlf: bool, threshold: float) -> None:
    rows = [(r * len(header))[: len(header)] if len(r) < len(header) and r else r for r in rows]
    check_tables(csv_table(header, rows, bom, crlf), threshold)


# =========================================================================== contrast JSONL

JSONL_DISPLAY = "prompts/fuzz.jsonl"
JSONL_LINES = ["[" * 100_000, '{"a": ' + BIG_LITERAL + "}", '{"prompt": "x"}', '{"prompt": "x"}', "NaN",
               '{"a": NaN}', '{"messages": [{"content": 1}, {"role": "u"}]}', '{"messages": []}', '{"text": null}',
               '{"a": "x\u2028y"}', '"x"', "{}", "", "   ", "\x00", '{"prompt": "\\ud800"}', "\ufeff{}",
               '{"a": 1e999}', '{"a": -0}', "[" * 500 + "]" * 500, '{"prompt": "' + "x" * 200_000 + '"}']
jsonl_line = st.one_of(json_values.map(dumps_json), st.text(max_size=40), st.sampled_from(JSONL_LINES))


@fuzz(250)
@given(lines=st.lists(jsonl_line, max_size=5), sep=st.sampled_from(["\n", "\r\n", "\r"]),
       raw=st.none() | st.binary(max_size=100))
@example(lines=["[" * 100_000], sep="\n", raw=None)  # RecursionError, contrast.py json.loads
@example(lines=['{"a": ' + BIG_LITERAL + "}"], sep="\n", raw=None)  # ValueError (int digit limit)
def test_contrast(lines: list[str], sep: str, raw: bytes | None) -> None:
    data = raw if raw is not None else sep.join(lines).encode("utf-8", "surrogatepass")
    with scratch() as d:
        p = d / "fuzz.jsonl"
        p.write_bytes(data)
        cs = clean(lambda: read_contrast(p, JSONL_DISPLAY, "label"), JSONL_DISPLAY)
        if cs is not None:
            assert cs.prompts and all(isinstance(t, str) for t in cs.prompts)


# =========================================================================== direction files

DIR_DISPLAY = "vectors/fuzz"  # + the suffix


def check_direction_set(ds: Any) -> None:
    """What a returned DirectionSet promises: at least one layer, one d, and the selected layer among them."""
    assert ds.layers, "a DirectionSet without layers"
    assert len({int(t.shape[0]) for t in ds.layers.values()}) == 1
    assert all(t.dim() == 1 and t.shape[0] > 0 for t in ds.layers.values())
    assert ds.selected_layer is None or ds.selected_layer in ds.layers


def check_direction_file(data: bytes, suffix: str, layer: int | None = None) -> None:
    where = DIR_DISPLAY + suffix
    with scratch() as d:
        p = d / ("fuzz" + suffix)
        p.write_bytes(data)
        ds = clean(lambda: read_direction_file(p, layer=layer, display=where), where)
        if ds is not None:
            check_direction_set(ds)
        if suffix == ".safetensors":
            check_canonical_readers(p, where)


def check_canonical_readers(p: Path, where: str) -> None:
    ds = clean(lambda: read_canonical(p, display=where), where)
    if ds is not None:
        check_direction_set(ds)
    layout = clean(lambda: canonical_layout(p, display=where), where)
    if layout is not None:
        assert layout[1]
        for layer in list(layout[1])[:2] + [0]:
            v = clean(lambda layer=layer: canonical_vector(p, layer, display=where), where)
            if v is not None:
                assert v.ndim == 1 and np.isfinite(v).all()


@fuzz(300)
@given(suffix=st.sampled_from([".safetensors", ".npy", ".pt", ".pth"]), data=st.binary(max_size=300))
def test_direction_random_bytes(suffix: str, data: bytes) -> None:
    check_direction_file(data, suffix, layer=0)


@functools.cache
def valid_direction_files() -> dict[str, tuple[str, bytes]]:
    """Small valid files of every format a direction comes in (canonical, safetensors lib, .npy, .pt)."""
    from safetensors.torch import save as st_save

    from hubkit.formats.directions import DirectionSet, canonical_bytes

    rows = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    ds = DirectionSet("fuzz", {i: rows[i] for i in range(3)}, selected_layer=1)
    npy = io.BytesIO()
    np.save(npy, rows.numpy())
    pt = io.BytesIO()
    torch.save({f"layer.{i}": rows[i] for i in range(3)}, pt)
    pt2 = io.BytesIO()
    torch.save(rows, pt2)
    return {"canonical": (".safetensors", canonical_bytes(ds)),
            "st-lib": (".safetensors", st_save({"layer.0": rows[0].contiguous(), "layer.2": rows[2].contiguous()},
                                               metadata={"format": "hubkit-direction", "selected_layer": "2"})),
            "npy": (".npy", npy.getvalue()), "pt-dict": (".pt", pt.getvalue()), "pt-2d": (".pt", pt2.getvalue())}


@fuzz(300)
@given(kind=st.sampled_from(["canonical", "st-lib", "npy", "pt-dict", "pt-2d"]), cut=st.integers(0, 10_000),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
@example(kind="st-lib", cut=10, flips=[(1079, 9)])  # data_offsets [16, 2]: ValueError, directions.py f.read(e - b)
def test_direction_truncated_or_flipped(kind: str, cut: int, flips: list[tuple[int, int]]) -> None:
    suffix, data = valid_direction_files()[kind]
    buf = bytearray(data[: len(data) - cut % (len(data) + 1)] if cut else data)
    for pos, byte in flips:
        if buf:
            buf[pos % len(buf)] = byte
    check_direction_file(bytes(buf), suffix)


# ----------------------------------------------------------------- safetensors files with crafted headers

ST_KEYS = ["layer.0", "layer.1", "0", "1", "22", "layer.22", "l5", "L5", "layer_3", "layers.4", "layer-1",
           "layer.-1", "-1", "layer.²", "²", "x", "a\nb", "1" * 5000, "layer." + "9" * 30]
ST_DTYPES = ["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "C64", "F8_E4M3", "X", "", None, 5, ["F32"]]
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "U8": 1, "BOOL": 1, "C64": 8, "F8_E4M3": 1}
st_shape = st.one_of(st.lists(st.integers(0, 4), min_size=1, max_size=2), st.lists(st.integers(0, 4), max_size=3),
                     st.lists(st.sampled_from([-1, 2**48, 2**64, 10**400, 1.5, None, "x", True]), min_size=1,
                              max_size=2), st.sampled_from([None, "4", 4, {}]))
st_offsets = st.one_of(st.just("auto"), st.just("auto"), st.just("missing"),
                       st.lists(st.sampled_from([0, 4, 8, 16, -8, 2**62, 2**64, 10**400, 1.5, None, "4"]),
                                min_size=0, max_size=3))
noisy_entry = st.fixed_dictionaries({"dtype": st.sampled_from(ST_DTYPES), "shape": st_shape, "offsets": st_offsets})
valid_entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "F64"]),
                                     "shape": st.lists(st.integers(1, 4), min_size=1, max_size=1),
                                     "offsets": st.just("auto")})
st_entry = st.one_of(valid_entry, valid_entry, noisy_entry)  # mostly well formed: the checks behind the header run
st_key = st.one_of(st.sampled_from(["layer.0", "layer.1", "layer.2", "0", "2", "22", "layer.22"]), st.sampled_from(ST_KEYS))
SELECTED = ["0", "1", "2", "22", "-1", "", "x", "²", "layer.1", "1" * 5000, "9" * 12]
st_meta = st.one_of(
    st.none(), st.just("missing"),
    st.fixed_dictionaries({"format": st.just("hubkit-direction")},
                          optional={"selected_layer": st.sampled_from(SELECTED),
                                    "layer_convention": st.sampled_from(["block", "hidden_states", "x"]),
                                    "name": st.sampled_from(["n", "", "a\nb"])}),
    st.dictionaries(st.sampled_from(["format", "selected_layer", "layer_convention", "name", "source"]),
                    st.sampled_from(["hubkit-direction", "block", "hidden_states"] + SELECTED), max_size=4),
    st.sampled_from([[1], "x", 5, {"a": 1}, {"format": "hubkit-direction", "selected_layer": 1}]))
st_values = st.sampled_from([1.0, 0.5, -2.0, 0.0, math.nan, math.inf, 1e-45, 3e38, 0.25, -1.0])


def safetensors_bytes(entries: dict[str, dict[str, Any]], meta: Any, values: list[float], pad: int = 0) -> bytes:
    """A safetensors file whose header is exactly what ``entries`` say: ``offsets`` "auto" lays the tensors out
    back to back (sized by shape and dtype), "missing" leaves the key out, anything else is written as is."""
    header: dict[str, Any] = {}
    if meta != "missing":
        header["__metadata__"] = meta
    pos = 0
    for name, e in entries.items():
        info: dict[str, Any] = {"dtype": e["dtype"], "shape": e["shape"]}
        if e["offsets"] == "auto":
            n = 1
            for s in e["shape"] if isinstance(e["shape"], list) else [1]:
                n *= s if isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 64 else 1
            size = n * ITEMSIZE.get(e["dtype"], 4) if isinstance(e["dtype"], str) else 4
            info["data_offsets"] = [pos, pos + size]
            pos += size
        elif e["offsets"] != "missing":
            info["data_offsets"] = e["offsets"]
        header[name] = info
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    floats = (values or [1.0]) * (pos // 4 + 1)
    data = struct.pack(f"<{len(floats)}f", *floats)[:pos] + b"\0" * pad
    return struct.pack("<Q", len(text)) + text + data


def F32(d: int = 1, offsets: Any = "auto") -> dict[str, Any]:
    return {"dtype": "F32", "shape": [d], "offsets": offsets}


@fuzz(500)
@given(entries=st.dictionaries(st_key, st_entry, max_size=3), meta=st_meta,
       values=st.lists(st_values, max_size=4), pad=st.sampled_from([0, 0, 0, 0, 1, 8]))
@example(entries={"layer.0": F32()}, meta=[1], values=[1.0], pad=0)  # AttributeError, directions.py raw_meta.items()
@example(entries={"layer.0": {"dtype": "F32", "shape": ["x"], "offsets": [0, 4]}}, meta=None, values=[1.0], pad=0)
@example(entries={"layer.0": F32(offsets=[4, 0])}, meta=None, values=[1.0], pad=4)  # ValueError: f.read(-4)
@example(entries={"layer.0": F32(offsets=[])}, meta=None, values=[1.0], pad=4)  # ValueError: unpacking data_offsets
@example(entries={"layer.0": {"dtype": "F32", "shape": [None], "offsets": [0, 4]}}, meta=None, values=[1.0], pad=0)
@example(entries={"layer.0": {"dtype": ["F32"], "shape": [1], "offsets": [0, 4]}}, meta=None, values=[1.0], pad=0)
@example(entries={"layer.0": F32(offsets="missing")}, meta=None, values=[1.0], pad=4)  # KeyError data_offsets
@example(entries={"layer.0": F32(offsets=[0, 2**62])}, meta=None, values=[1.0], pad=4)  # MemoryError f.read
@example(entries={"layer.²": F32()}, meta=None, values=[1.0], pad=0)  # ValueError int('²'), directions _layer_key
@example(entries={"1" * 5000: F32()}, meta=None, values=[1.0], pad=0)  # ValueError (int digit limit)
@example(entries={"a\nb": {"dtype": "F32", "shape": [1, 1], "offsets": "auto"}}, meta=None, values=[1.0], pad=0)
@example(entries={"layer.0": F32()}, meta={"format": "hubkit-direction", "selected_layer": "x"}, values=[1.0], pad=0)
@example(entries={"layer.0": F32()}, meta={"selected_layer": "x"}, values=[1.0], pad=0)  # ValueError, read_canonical int(sel)
@example(entries={"layer.0": F32()}, meta={"selected_layer": "1"}, values=[1.0], pad=0)  # selected layer 1 not in {0}
@example(entries={"a\nb": F32()}, meta=None, values=[1.0], pad=0)  # "key ... is not a layer index": two lines
def test_safetensors_crafted_header(entries: dict, meta: Any, values: list[float], pad: int) -> None:
    data = safetensors_bytes(entries, meta, values, pad)
    check_direction_file(data, ".safetensors")
    with scratch() as d:
        p = d / "fuzz.safetensors"
        p.write_bytes(data)
        clean(lambda: read_header(p), str(p))
        (d / "ckpt").mkdir()
        (d / "ckpt" / SINGLE_NAME).write_bytes(data)
        clean(lambda: read_index(d / "ckpt"), str(d / "ckpt"))


def test_canonical_refuses_duplicate_layer_keys() -> None:
    """``22`` and ``layer.22`` both name layer 22: read_direction_file refuses, so must the canonical readers
    (today the last key silently wins)."""
    data = safetensors_bytes({"22": F32(2), "layer.22": F32(2)}, None, [1.0, 2.0, 3.0, 4.0])
    with scratch() as d:
        p = d / "dup.safetensors"
        p.write_bytes(data)
        for read in (lambda: read_direction_file(p, display="dup.safetensors"),
                     lambda: read_canonical(p, display="dup.safetensors"),
                     lambda: canonical_layout(p, display="dup.safetensors")):
            with pytest.raises(HubkitError, match="22") as info:
                read()
            assert "\n" not in str(info.value) and "dup.safetensors" in str(info.value)


@pytest.mark.parametrize("length_field, body", [
    (1 << 63, b"{}"), ((100 << 20), b"{}"), ((100 << 20) + 1, b"{}"), (2**64 - 1, b""), (7, b"{}"), (0, b""),
    (4_000_000, b"[" * 4_000_000),  # deep nesting in a large header
    (2_400_000, b'{"__metadata__": {"format": "hubkit-direction"}, "layer.0": ' + b"[" * 2_400_000),
], ids=["len-2^63", "len-100MiB", "len-100MiB+1", "len-2^64-1", "len-7", "len-0", "deep-4MB", "deep-entry-2.4MB"])
def test_safetensors_huge_header_is_quick(length_field: int, body: bytes) -> None:
    data = struct.pack("<Q", length_field) + body
    with scratch() as d:
        p = d / "big.safetensors"
        p.write_bytes(data)
        (d / "ckpt").mkdir()
        (d / "ckpt" / SINGLE_NAME).write_bytes(data)
        t0 = time.perf_counter()
        clean(lambda: read_header(p), str(p), limit=HANG_S)
        clean(lambda: read_index(d / "ckpt"), str(d / "ckpt"), limit=HANG_S)
        clean(lambda: read_canonical(p, display="big.safetensors"), "big.safetensors", limit=HANG_S)
        clean(lambda: read_direction_file(p, display="big.safetensors"), "big.safetensors", limit=HANG_S)
        assert time.perf_counter() - t0 < 2 * HANG_S


# ----------------------------------------------------------------- .npy files with crafted headers

NPY_DESCRS = ["<f4", "<f8", "<f2", ">f4", ">f8", "<U1", "|S2", "<M8[s]", "<m8[s]", "<c8", "|b1", "<i4", "<u2",
              "|V4", "<f16", "|O", "[('a', '<f4')]", "<q", "bogus", 5]


def npy_bytes(descr: Any, shape: Any, fortran: bool, data: bytes) -> bytes:
    descr_txt = descr if isinstance(descr, str) and descr.startswith("[") else repr(descr)
    hdr = f"{{'descr': {descr_txt}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}".encode()
    hdr += b" " * (-(len(hdr) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr + data


@fuzz(300)
@given(descr=st.sampled_from(NPY_DESCRS),
       shape=st.one_of(st.tuples(st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3)), st.just(()),
                       st.sampled_from([(1 << 40,), (-1,), (2, 2, 2), (3, 1 << 62)])),
       fortran=st.booleans(), fill=st.sampled_from([b"\0", b"\x3f\x80\0\0", b"\x7f\xc0\0\0", b"\x01"]),
       n=st.integers(0, 64), layer=st.sampled_from([None, 0, 2]))
@example(descr="<U1", shape=(2,), fortran=False, fill=b"\x01", n=8, layer=0)  # TypeError, torch.from_numpy
@example(descr="|S2", shape=(2,), fortran=False, fill=b"\x01", n=4, layer=0)
@example(descr=">f4", shape=(2,), fortran=False, fill=b"\x3f\x80\0\0", n=8, layer=0)  # ValueError: byte order
@example(descr="<M8[s]", shape=(1,), fortran=False, fill=b"\0", n=8, layer=0)
@example(descr="<f16", shape=(1,), fortran=False, fill=b"\0", n=16, layer=0)  # longdouble
@example(descr="|V4", shape=(1,), fortran=False, fill=b"\0", n=4, layer=0)
@example(descr="<f4", shape=(0, 4), fortran=False, fill=b"\0", n=0, layer=None)  # returns a set without layers
def test_npy_crafted(descr: Any, shape: tuple, fortran: bool, fill: bytes, n: int, layer: int | None) -> None:
    check_direction_file(npy_bytes(descr, shape, fortran, (fill * n)[: n * 4]), ".npy", layer=layer)


# ----------------------------------------------------------------- .pt files holding crafted objects

PT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool,
             torch.complex64, torch.uint8]


@st.composite
def pt_tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.sampled_from([(4,), (2, 4), (0,), (0, 4), (4, 0), (), (2, 2, 2), (1,)]))
    t = torch.ones(shape, dtype=torch.float64) * draw(st.sampled_from([1.0, 0.0, -0.5, math.nan, math.inf, 1e300]))
    t = t.to(draw(st.sampled_from(PT_DTYPES)))
    form = draw(st.sampled_from(["plain", "plain", "sparse", "csr", "meta", "view", "grad", "bomb"]))
    if form == "sparse" and t.dim() >= 1:
        return t.to_sparse()
    if form == "csr" and t.dim() == 2:
        return t.to_sparse_csr()
    if form == "bomb" and t.dim() >= 1 and t.shape[-1] > 0:  # stride 0: a few bytes on disk, 2**48 bytes dense
        return t[..., :1].expand(*t.shape[:-1], 2**46)
    if form == "meta":
        return torch.empty(shape, device="meta")
    if form == "view" and t.dim() == 2:
        return t.t()
    if form == "grad" and t.is_floating_point():
        return t.clone().requires_grad_(True)
    return t


pt_keys = st.one_of(st.integers(-2, 30), st.sampled_from(ST_KEYS), st.sampled_from([True, 1.5, (1, 2), None]))
pt_objects = st.recursive(
    st.one_of(pt_tensors(), st.sampled_from([None, 5, "x", 1.5, b"x"])),
    lambda c: st.lists(c, max_size=3) | st.tuples(c, c) | st.dictionaries(pt_keys, c, max_size=3), max_leaves=5)


@fuzz(250)
@given(obj=pt_objects, layer=st.sampled_from([None, 0, 1, 22]))
@example(obj={"layer.²": torch.ones(2)}, layer=None)  # ValueError int('²'), directions.py _layer_key
@example(obj={"1" * 5000: torch.ones(2)}, layer=None)  # ValueError (int digit limit)
@example(obj={"a\nb": torch.ones(2)}, layer=None)  # "key ... is not a layer index": two lines
@example(obj=torch.ones(3).to_sparse(), layer=0)  # RuntimeError, directions.py _as_tensor .contiguous()
@example(obj=torch.empty(3, device="meta"), layer=0)  # NotImplementedError, directions.py _as_tensor .clone()
@example(obj=torch.ones(2, 2).to_sparse_csr(), layer=None)  # RuntimeError: CSR has no is_contiguous
@example(obj=torch.ones(1).expand(2**46), layer=0)  # RuntimeError: .contiguous() allocates 256 TiB
@example(obj=torch.ones(0, 4), layer=None)  # returns a DirectionSet without layers
def test_pt_crafted(obj: Any, layer: int | None) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    check_direction_file(buf.getvalue(), ".pt", layer=layer)


# =========================================================================== checkpoint index

SHARD_NAMES = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "../x.safetensors",
               "/abs/x.safetensors", "a\nb.safetensors", "x.bin", "", ".", "..", "a\0.safetensors", "a\\b.safetensors",
               "sub/x.safetensors", "x" * 300 + ".safetensors", "missing.safetensors", "model.safetensors"]
GOOD_SHARD = safetensors_bytes({"model.layers.0.mlp.down_proj.weight": {"dtype": "F32", "shape": [2, 2],
                                                                        "offsets": "auto"}}, None, [1.0])


@fuzz(250)
@given(index=st.one_of(json_values, st.builds(lambda m: {"weight_map": m},
                                              st.dictionaries(st.text(max_size=6), st.sampled_from(SHARD_NAMES) |
                                                              json_values, max_size=3))),
       shards=st.dictionaries(st.sampled_from(SHARD_NAMES[:2] + ["model.safetensors", "a\nb.safetensors"]),
                              st.one_of(st.just(GOOD_SHARD), st.binary(max_size=40),
                                        st.builds(safetensors_bytes,
                                                  st.dictionaries(st.sampled_from(ST_KEYS), st_entry, max_size=2),
                                                  st_meta, st.just([1.0]))),
                              max_size=2),
       raw_index=st.none() | st.binary(max_size=60))
@example(index={"weight_map": {"t": "a\nb.safetensors"}}, shards={}, raw_index=None)  # two-line "not in the folder"
@example(index={"weight_map": {"t": "x" * 300 + ".safetensors"}}, shards={}, raw_index=None)  # OSError ENAMETOOLONG
def test_read_index(index: Any, shards: dict[str, bytes], raw_index: bytes | None) -> None:
    with scratch() as d:
        ckpt = d / "ckpt"
        ckpt.mkdir()
        for name, data in shards.items():
            (ckpt / name).write_bytes(data)
        (ckpt / INDEX_NAME).write_bytes(raw_index if raw_index is not None else dumps_json(index).encode())
        result = clean(lambda: read_index(ckpt), str(ckpt))
        if result is not None:
            for t in result[1].values():
                assert t.shard in {s.name for s in result[0]} and 0 <= t.begin <= t.end


def test_read_index_duplicate_tensor_two_line_name() -> None:
    """A tensor in two shards: its name is quoted (repr) so a crafted name can't split the message."""
    shard = safetensors_bytes({"a\nb": {"dtype": "F32", "shape": [1], "offsets": "auto"}}, None, [1.0])
    with scratch() as d:
        for n in SHARD_NAMES[:2]:
            (d / n).write_bytes(shard)
        (d / INDEX_NAME).write_text(json.dumps({"weight_map": {"a\nb": SHARD_NAMES[0], "x": SHARD_NAMES[1]}}))
        clean(lambda: read_index(d), str(d))


# =========================================================================== hubkit.json

HJ_WHERE = "owner/fuzz@v1: hubkit.json"


@functools.cache
def staged_run() -> Path:
    """A real publish tree (``stage_run`` of a copy of artifacts/persona-vector), staged once per session."""
    from hubkit.publish.commit import stage_run

    d = Path(tempfile.mkdtemp(prefix="hubkit-fuzz-staged-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    shutil.copytree(ARTIFACTS / "persona-vector", d / "run")
    stage_run(d / "run", d / "out")
    return d / "out"


@functools.cache
def staged_meta() -> dict[str, Any]:
    return json.loads((staged_run() / "hubkit.json").read_text(encoding="utf-8"))


@functools.cache
def staged_paths() -> list[tuple]:
    """Every place in the staged hubkit.json but inside ``run`` (the manifest, kept as given: parse checks none of it)."""
    paths = [p for p in tree_paths(staged_meta()) if not (len(p) > 1 and p[0] == "run")]
    return sorted(paths, key=lambda p: (len(p), str(p)))


hj_paths = st.deferred(lambda: st.sampled_from(staged_paths()))
HJ_RAW = {'"__DEEP__"': "[" * 100_000 + "]" * 100_000}
hj_mutation = st.tuples(hj_paths, st.sampled_from(["set", "set", "delete", "add", "wrap"]),
                        st.sampled_from(["extra", "layer", "weight", "a\nb", "", "schema", "shards_sha256", "norm"]),
                        json_values | st.sampled_from(["__DEEP__"]))


def dump_hubjson(tree: Any) -> bytes:
    text = dumps_json(tree)
    for token, raw in HJ_RAW.items():
        text = text.replace(token, raw)
    return text.encode()


def check_hubjson(data: bytes) -> None:
    hj = clean(lambda: hubjson.parse(data, HJ_WHERE), HJ_WHERE)
    if hj is not None:
        assert all(not f.path.startswith("/") and ".." not in f.path.split("/") for f in hj.files)


def test_hubjson_staged_is_valid() -> None:
    hj = hubjson.parse((staged_run() / "hubkit.json").read_bytes(), HJ_WHERE)
    assert hj.files and hj.directions and hj.regenerate is not None


def test_hubjson_with_a_key_twice_is_refused() -> None:
    """Which `regenerate` is meant? json.loads keeps the last silently; hubkit refuses to guess."""
    text = (staged_run() / "hubkit.json").read_text(encoding="utf-8")
    doubled = text.rstrip().rstrip("}") + ', "regenerate": {}}'
    with pytest.raises(hubjson.HubJsonError, match="not valid JSON .*regenerate"):
        hubjson.parse(doubled.encode(), HJ_WHERE)


@fuzz(300)
@given(data=st.one_of(json_values.map(lambda v: dumps_json(v).encode()), st.binary(max_size=200),
                      st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_hubjson_random(data: bytes) -> None:
    check_hubjson(data)


@fuzz(400)
@given(mutations=st.lists(hj_mutation, min_size=1, max_size=3))
@example(mutations=[(("regenerate", "layer"), "set", "", 10**400)])  # OverflowError, recipe.py _layer
@example(mutations=[(("regenerate",), "add", "weight", 10**400)])  # OverflowError, recipe.py _number
@example(mutations=[(("regenerate", "targets"), "set", "", ["attn_out"]),
                    (("regenerate",), "add", "weight", {"attn_out": {"²": 1}})])  # ValueError, recipe.py _weight
@example(mutations=[(("regenerate",), "add", "a\nb", 1)])  # two-line "not a recipe parameter"
@example(mutations=[(("regenerate",), "add", "shards_sha256", {"a\nb": "x"})])  # two-line sha256 message
@example(mutations=[(("files", 0, "path"), "set", "", "a\nb"), (("files", 1, "path"), "set", "", "a\nb")])
@example(mutations=[(("regenerate", "norm"), "add", "", "a\nb"), (("regenerate",), "add", "norm", "a\nb")])
def test_hubjson_mutated(mutations: list) -> None:
    check_hubjson(dump_hubjson(apply_mutations(staged_meta(), mutations)))


# =========================================================================== a staged repo as a source

FS_OPS = ["none", "symlink-file-out", "symlink-dir-out", "symlink-loop", "truncate", "replace-with-dir", "delete",
          "hubkit-json-symlink-out", "hubkit-json-dir"]
EXTRA_RELS = ["a" * 300, "vectors/" + "b" * 300 + ".safetensors", "a\nb", "../x", "/etc/passwd", "up/secret.txt",
              "loop", "vectors", "hubkit.json", "", ".", "a//b", "./a", "~x", 5, None]


def apply_fs_op(root: Path, op: str, target: str, outside: Path) -> None:
    path = root / target
    if op == "symlink-file-out" and path.is_file():
        path.unlink()
        path.symlink_to(outside / "secret.txt")
    elif op == "symlink-dir-out":
        (root / "up").symlink_to(outside)
    elif op == "symlink-loop":
        (root / "loop").symlink_to(root / "loop2")
        (root / "loop2").symlink_to(root / "loop")
    elif op == "truncate" and path.is_file():
        path.write_bytes(path.read_bytes()[:3])
    elif op == "replace-with-dir" and path.is_file():
        path.unlink()
        path.mkdir()
    elif op == "delete" and path.is_file():
        path.unlink()
    elif op == "hubkit-json-symlink-out":
        (root / "hubkit.json").unlink()
        (root / "hubkit.json").symlink_to(outside / "secret.txt")
    elif op == "hubkit-json-dir":
        (root / "hubkit.json").unlink()
        (root / "hubkit.json").mkdir()


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


@fuzz(150)
@given(mutations=st.lists(hj_mutation, max_size=2), op=st.sampled_from(FS_OPS),
       target=st.sampled_from(["vectors/persona.safetensors", "README.md", "results/abl.csv"]),
       extra=st.lists(st.sampled_from(EXTRA_RELS), max_size=2))
@example(mutations=[], op="none", target="README.md", extra=["a" * 300])  # OSError ENAMETOOLONG, source.py fetch
@example(mutations=[(("files", 0, "path"), "set", "", "a\nb")], op="none", target="README.md", extra=[])
def test_repo_source_local(mutations: list, op: str, target: str, extra: list) -> None:
    with scratch() as d:
        outside = d / "outside"
        outside.mkdir()
        (outside / "secret.txt").write_text("not part of the repo")
        root = d / "repo"
        shutil.copytree(staged_run(), root)
        meta = apply_mutations(staged_meta(), mutations)
        (root / "hubkit.json").write_bytes(dump_hubjson(meta))
        apply_fs_op(root, op, target, outside)
        where = str(root)
        src = RepoSource.local(root)
        clean(lambda: src.meta, where)
        rels: list[Any] = list(extra)
        if isinstance(meta, dict):
            for f in _list(meta.get("files")):
                rels.append(f.get("path") if isinstance(f, dict) else f)
            for dr in _list(meta.get("directions")):
                if isinstance(dr, dict):
                    rels += [dr.get("canonical"), dr.get("file")]
        for rel in rels[:40]:
            path = clean(lambda rel=rel: src.verified(rel), where)
            if path is not None:
                real = os.path.realpath(path)
                assert real.startswith(os.path.realpath(root) + os.sep), f"{rel!r} resolved outside: {real}"
