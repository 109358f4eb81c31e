"""Benchmark ``export lora``'s ``preserve`` factorisation: the old Gram matrix + ``eigh`` against the randomized
SVD of :func:`hubkit.weights.lora.writer_factors`, side by side in one run.

1. Factorisation (always, in this process): residual writers of Qwen3.5-4B's shapes (d = 2560; attention
   out in = 4096, MLP down in = 9216 as in ``make_synthetic_checkpoint.py``'s config, and 9728),
   bf16-rounded values, a unit direction, weight 1, rank 3. Two kinds of W: ``iid`` (Gaussian, a flat
   spectrum, the randomized SVD's hard case) and ``decaying`` (singular values ∝ 1/j, the direction mostly in
   the top singular directions). For each: seconds, the reported relative error of both (the old one is the
   optimum, exact eigenvectors of ΔW ΔWᵀ), the new one's true error from the explicit ΔW, and the peak of
   numpy's allocations (tracemalloc) during each call.
2. ``--checkpoint DIR`` (a folder from ``make_synthetic_checkpoint.py``): ``hubkit export lora`` end to end in
   child processes (wall seconds, peak RSS), the working tree against the ``lora.py`` of ``--old-ref``, for
   ``--recipes`` (``seed``: embedding + attention out + MLP down; ``pre``; ``preserve`` at rank 3), and how far
   apart the two adapters' products B A are (warm page cache: the shards are read once first).

    python benchmarks/bench_lora.py [--shapes 4096,9216,9728] [--repeats 3] [--checkpoint /tmp/ckpt8 --recipes ...]

Prints a table and writes ``benchmarks/out/lora-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

D = 2560
RANK = 3
RECIPES: dict[str, dict] = {
    "seed": {"targets": ["embed_tokens", "attn_out", "mlp_down"]},
    "pre": {"targets": ["attn_out", "mlp_down"], "norm": "pre"},
    "preserve": {"targets": ["attn_out", "mlp_down"], "norm": "preserve"},
}


def old_preserve(w_mat: np.ndarray, u: np.ndarray, w: float, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The previous ``preserve`` path of hubkit/weights/lora.py (509559a), verbatim in substance."""
    n = np.sqrt((w_mat * w_mat).sum(axis=1))
    n = np.where(n == 0, 1.0, n)
    hat = w_mat / n[:, None]
    s = u @ hat
    m = hat - w * np.outer(u, s)
    mn = np.sqrt((m * m).sum(axis=1))
    out = m * (n / np.where(mn == 0, 1.0, mn))[:, None]
    delta = out - w_mat
    gram = delta @ delta.T
    _, vecs = np.linalg.eigh(gram)
    top = vecs[:, ::-1][:, :k]
    a = top.T @ delta
    rest = delta - top @ a
    norm = math.sqrt(float((delta * delta).sum()))
    return top, a, (math.sqrt(float((rest * rest).sum())) / norm if norm else 0.0)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16 (nearest-even), as float64."""
    bits = x.astype(np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return bits.view(np.float32).astype(np.float64)


def make_writer(kind: str, d: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "iid":
        w_mat = rng.standard_normal((d, m)) * 0.02
        u = rng.standard_normal(d)
    else:  # singular values ∝ 1/j; u mostly in the top 32 left singular directions
        r = min(d, m)
        left = np.linalg.qr(rng.standard_normal((d, r)))[0]
        right = np.linalg.qr(rng.standard_normal((m, r)))[0]
        w_mat = (left * (1.0 / np.arange(1, r + 1))) @ right.T
        w_mat *= 0.02 / w_mat.std()
        u = left[:, :32] @ rng.standard_normal(32) + 0.3 * rng.standard_normal(d) / math.sqrt(d)
    return bf16_round(w_mat), u / np.linalg.norm(u)


def explicit_delta(w_mat: np.ndarray, u: np.ndarray, w: float) -> np.ndarray:
    n = np.linalg.norm(w_mat, axis=1)
    hat = w_mat / np.where(n == 0, 1.0, n)[:, None]
    m = hat - w * np.outer(u, u @ hat)
    mn = np.linalg.norm(m, axis=1)
    return m * np.where(mn == 0, 0.0, n / np.where(mn == 0, 1.0, mn))[:, None] - w_mat


def timed(fn, *args, repeats: int = 1) -> tuple[tuple, float, float]:
    """fn's result, its fastest time of ``repeats`` calls and the peak of numpy's allocations during the first."""
    tracemalloc.start()
    t = time.perf_counter()
    res = fn(*args)
    best = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for _ in range(repeats - 1):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return res, best, peak / 2**20


def factorisation(shapes: list[int], repeats: int) -> list[dict]:
    from hubkit.weights.lora import writer_factors

    rows = []
    for kind in ("iid", "decaying"):
        for m in shapes:
            w_mat, u = make_writer(kind, D, m, seed=m)
            (b_new, a_new, err_new), s_new, mem_new = timed(writer_factors, w_mat, u, 1.0, "preserve", RANK,
                                                             repeats=repeats)
            (_, _, err_old), s_old, mem_old = timed(old_preserve, w_mat, u, 1.0, RANK, repeats=repeats)
            delta = explicit_delta(w_mat, u, 1.0)
            true_new = float(np.linalg.norm(delta - b_new @ a_new) / np.linalg.norm(delta))
            del delta
            rows.append({"kind": kind, "d": D, "in": m, "rank": RANK, "old_s": round(s_old, 3),
                         "new_s": round(s_new, 3), "speedup": round(s_old / s_new, 1), "old_err": err_old,
                         "new_err": err_new, "new_true_err": true_new, "new_over_opt": err_new / err_old - 1,
                         "old_peak_mib": round(mem_old), "new_peak_mib": round(mem_new)})
            r = rows[-1]
            print(f"{kind:8s} [{D}, {m}]  old {r['old_s']:7.2f} s err {err_old:.6f} ({r['old_peak_mib']} MiB)  "
                  f"new {r['new_s']:6.3f} s err {err_new:.6f} (true {true_new:.6f}, {r['new_peak_mib']} MiB)  "
                  f"{r['speedup']}x, new/opt − 1 = {r['new_over_opt']:.2e}", flush=True)
    return rows


CHILD_SNIPPET = """
import json, subprocess, sys, time, types
arm, ref, recipe, ckpt, out, rank = sys.argv[1:7]
if arm == "old":
    src = subprocess.run(["git", "show", ref + ":hubkit/weights/lora.py"], capture_output=True, text=True,
                         check=True).stdout
    mod = types.ModuleType("hubkit.weights.lora_old")
    sys.modules[mod.__name__] = mod
    exec(compile(src, "lora_old.py", "exec"), mod.__dict__)
else:
    from hubkit.weights import lora as mod
t = time.perf_counter()
res = mod.export_lora(recipe, base_model=ckpt, out=out, rank=int(rank))
secs = time.perf_counter() - t
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
worst = res.worst
print(json.dumps({"export_s": round(secs, 2), "peak_rss_mib": round(hwm / 1024),
                  "worst_error": worst.rel_error if worst else 0.0}))
"""


def _stage(root: Path, recipe: str, layer: int) -> Path:
    import torch

    from hubkit.formats.directions import DirectionSet, write_canonical

    if root.exists():
        shutil.rmtree(root)
    ds = DirectionSet("refusal", {layer: torch.randn(D, generator=torch.Generator().manual_seed(0))},
                      selected_layer=layer)
    write_canonical(ds, root / "vectors" / "refusal.safetensors")
    meta = {"hubkit_version": "0.1.0", "version": "v1", "files": [],
            "run": {"title": "benchmark", "base_model": "Qwen/Qwen3.5-4B", "base_model_revision": None},
            "directions": [{"name": "refusal", "file": "vectors/refusal.safetensors",
                            "canonical": "vectors/refusal.safetensors", "layers": [layer], "d": D,
                            "selected_layer": layer, "layer_convention": "block", "unit_norm": False}],
            "regenerate": {"direction": "refusal", "layer": layer, "layer_convention": "block", **RECIPES[recipe],
                           "base_model": "Qwen/Qwen3.5-4B", "base_model_revision": None}}
    (root / "hubkit.json").write_text(json.dumps(meta, indent=2))
    return root


def _child(argv: list[str]) -> dict:
    """Run a CHILD_SNIPPET: wall seconds (with interpreter start and imports), export_lora's own seconds, and the
    child's own peak RSS (VmHWM: a fresh address space from exec on, whatever this process holds)."""
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env)
    res = {"wall_s": round(time.perf_counter() - t, 2), "rc": proc.returncode}
    if proc.returncode == 0:
        res.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:
        res["tail"] = (proc.stdout + proc.stderr)[-800:]
    return res


def _apart(a: Path, b: Path) -> dict:
    """The largest |difference| of the two adapters' products B A (per module, relative to its largest entry)."""
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    worst = 0.0
    for key in ta:
        if key.endswith(("lora_A.weight", "lora_embedding_A")):
            bkey = key.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")
            pa = ta[bkey].astype(np.float64) @ ta[key].astype(np.float64)
            tb_prod = tb[bkey].astype(np.float64) @ tb[key].astype(np.float64)
            worst = max(worst, float(np.abs(pa - tb_prod).max() / max(np.abs(tb_prod).max(), 1e-300)))
    return {"same_keys": sorted(ta) == sorted(tb), "max_rel_product_diff": worst}


def end_to_end(ckpt: Path, recipes: list[str], old_ref: str, work: Path) -> list[dict]:
    cfg = json.loads((ckpt / "config.json").read_text())
    layers = cfg.get("text_config", cfg)["num_hidden_layers"]
    py, rows = sys.executable, []
    subprocess.run(["cat", *map(str, sorted(ckpt.glob("*.safetensors")))], stdout=subprocess.DEVNULL, check=True)
    for name in recipes:
        recipe = _stage(work / f"recipe-{name}", name, min(22, layers - 2))
        res = {}
        for arm in ("old", "new"):
            out = work / f"lora-{name}-{arm}"
            shutil.rmtree(out, ignore_errors=True)
            argv = [py, "-c", CHILD_SNIPPET, arm, old_ref, str(recipe), str(ckpt), str(out), str(RANK)]
            res[arm] = _child(argv)
            r = res[arm]
            print(f"{name:8s} {arm}: export {r.get('export_s')} s (wall {r['wall_s']} s), peak RSS "
                  f"{r.get('peak_rss_mib')} MiB, worst error {r.get('worst_error')}" + (
                      "" if r["rc"] == 0 else f", rc {r['rc']}: {r['tail']}"), flush=True)
        row = {"recipe": name, "old": res["old"], "new": res["new"]}
        if res["old"]["rc"] == 0 and res["new"]["rc"] == 0:
            row.update(_apart(work / f"lora-{name}-old", work / f"lora-{name}-new"))
            print(f"{name:8s} adapters: {row['max_rel_product_diff']:.3g} max relative difference of B A", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096,9216,9728", help="the writers' input widths (d = 2560); '' skips")
    ap.add_argument("--repeats", type=int, default=1, help="factorisation: the fastest of this many calls")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a synthetic checkpoint: also run export lora")
    ap.add_argument("--recipes", default="seed,pre,preserve")
    ap.add_argument("--old-ref", default="509559a", help="the git revision whose lora.py is the old arm")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-lora"))
    ap.add_argument("--label", default=platform.node() or "local")
    args = ap.parse_args()

    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "numpy": np.__version__},
              "factorisation": factorisation([int(s) for s in args.shapes.split(",") if s], args.repeats)}
    if args.checkpoint is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result["export_lora"] = end_to_end(args.checkpoint, [r for r in args.recipes.split(",") if r],
                                           args.old_ref, args.workdir)
    dest = HERE / "out" / f"lora-{args.label}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
