"""Benchmark: render the card of a run with 89-task per-task results for 3 arms and a 32-layer ranking.

Budget (the card issue): rendering under 1 s. Timed separately:
- ``card`` = ``build_card_data`` + ``render_card`` (statistics, overlap, front matter, jinja2);
- ``plot`` = ``build_assets`` (the ranking PNG through matplotlib's Agg canvas);
- ``first`` = the first render in a fresh process (template compilation, font loading included), after the
  libraries are imported; ``warm`` = the median of repeated renders in one process.
Library imports (one-time, ~0.5–1 s of matplotlib on a slow machine) and loading the run (torch) are
reported but are not rendering. The budget applies to ``render first`` and ``render warm``.

    python benchmarks/bench_card.py [--repeat 20]

Prints the timings and writes ``benchmarks/out/bench_card.json``; exits 1 when total_cold is over budget.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 1.0
N_TASKS = 89
N_LAYERS = 32
D = 2560


def make_run(root: Path) -> Path:
    """A synthetic run shaped like the seeds: 3 arms × 89 tasks, a 32-layer direction and ranking."""
    import torch

    rng = random.Random(0)
    run = root / "bench-run"
    (run / "results").mkdir(parents=True)
    (run / "vectors").mkdir()
    tasks = [f"task-{i:03d}" for i in range(N_TASKS)]
    rates = {"base": 0.05, "sft": 0.06, "abl": 0.10}
    for arm, p in rates.items():
        rows = "".join(f"{t},{int(rng.random() < p)}\n" for t in tasks)
        (run / "results" / f"{arm}.csv").write_text("task,passed\n" + rows)
    ranking = "layer,auc,margin,cos_v2,cos_refusal\n" + "".join(
        f"{i},{min(1.0, 0.6 + i * 0.02):.3f},{0.5 + i * 0.05:.2f},{rng.uniform(-0.3, 0.3):.3f},"
        f"{rng.uniform(-0.3, 0.3):.3f}\n" for i in range(N_LAYERS))
    (run / "vectors" / "ranking.csv").write_text(ranking)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(N_LAYERS, D, generator=g)
    torch.save(v / v.norm(dim=1, keepdim=True), run / "vectors" / "dir.pt")
    for c in ("pos", "neg"):
        (run / f"contrast_{c}.jsonl").write_text(
            "".join(json.dumps({"prompt": f"{c} prompt {i}"}) + "\n" for i in range(50)))
    (run / "hubkit.yaml").write_text(f"""\
title: Benchmark run
repo_id: bench/bench-run
date: 2026-05-15
base_model: Qwen/Qwen3.5-4B
license: apache-2.0
status: null-result
status_note: synthetic
summary: A synthetic run for the card benchmark.
directions:
  - {{name: bench, file: vectors/dir.pt, layer: 22, layer_convention: block, method: mean difference}}
ranking: vectors/ranking.csv
contrast:
  - {{file: contrast_pos.jsonl, label: pos}}
  - {{file: contrast_neg.jsonl, label: neg}}
evaluations:
  - name: bench-{N_TASKS}
    n: {N_TASKS}
    baseline: base
    arms:
      - {{id: base, per_task: results/base.csv}}
      - {{id: sft, per_task: results/sft.csv}}
      - {{id: abl, per_task: results/abl.csv, this: true}}
caveats: [synthetic data]
regenerate: {{direction: bench, layer: 22}}
""")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp))
        t0 = time.perf_counter()
        from hubkit.formats.hashing import HashCache
        from hubkit.publish.repo_tree import build_package
        from hubkit.run.run import load_run

        run = load_run(run_dir)
        t_load = time.perf_counter() - t0
        from hubkit.cards import model_card as card

        # the package's file list (hashes) is an input of the card, built once outside the timings
        pkg = build_package(run, hash_cache=HashCache(Path(tmp) / "cache.json"))
        files = [f for f in pkg.files if f.path not in ("README.md", "hubkit.json")]
        meta = pkg.meta

    # first-render numbers need a process where nothing has rendered yet (build_package above did): a child
    import subprocess

    child = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True) \
        if "--child" not in sys.argv else None
    return _report(child, run, files, meta, card, t_load, args.repeat)


def _cold_child() -> int:
    """Child process: load the run, then time the first plot and the first card (imports included)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp))
        from hubkit.formats.hashing import HashCache
        from hubkit.publish.repo_tree import canonical_path
        from hubkit.run.run import load_run

        run = load_run(run_dir)
        files = _files_without_rendering(run, HashCache(Path(tmp) / "cache.json"), canonical_path)
        from hubkit.formats.hubjson import HubJson

        meta = HubJson(hubkit_version="bench", repo_id="bench/bench-run", run={})
        t_imp = time.perf_counter()
        import huggingface_hub.repocard_data  # noqa: F401
        import jinja2  # noqa: F401
        import matplotlib.figure  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401

        from hubkit.cards import model_card as card

        t0 = time.perf_counter()
        assets = card.build_assets(run)
        t1 = time.perf_counter()
        text = card.render_card(card.build_card_data(run, files, meta))
        t2 = time.perf_counter()
    print(json.dumps({"imports_s": t0 - t_imp, "plot_first_s": t1 - t0, "card_first_s": t2 - t1,
                      "render_first_s": t2 - t0, "card_chars": len(text),
                      "png_bytes": sum(map(len, assets.values()))}))
    return 0


def _files_without_rendering(run, cache, canonical_path):
    """PackageFile entries for the run's files and canonical vectors, without calling into hubkit.card."""
    from hubkit.publish.repo_tree import PackageFile

    out = [PackageFile(f.path, f.size, cache.sha256(run.root / f.path), f.kind, source=run.root / f.path)
           for f in run.included_files]
    out += [PackageFile(canonical_path(d.name), 0, "0" * 64, "direction") for d in run.directions]
    out.append(PackageFile("assets/ranking.png", 0, "0" * 64, "asset"))
    return sorted(out, key=lambda f: f.path)


def _report(child, run, files, meta, card, t_load: float, repeat: int) -> int:
    cold = json.loads(child.stdout.strip().splitlines()[-1]) if child and child.returncode == 0 else {}
    if child is not None and child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        return 2
    warm_card, warm_plot = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        card.render_card(card.build_card_data(run, files, meta))
        warm_card.append(time.perf_counter() - t0)
    for _ in range(max(3, repeat // 5)):
        t0 = time.perf_counter()
        card.build_assets(run)
        warm_plot.append(time.perf_counter() - t0)
    result = {
        "benchmark": "card",
        "tasks": N_TASKS, "arms": 3, "layers": N_LAYERS, "d": D,
        "load_run_s": t_load,
        **cold,
        "card_warm_median_s": statistics.median(warm_card),
        "plot_warm_median_s": statistics.median(warm_plot),
        "budget_s": BUDGET_S,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    result["render_warm_s"] = result["card_warm_median_s"] + result["plot_warm_median_s"]
    result["within_budget"] = max(result.get("render_first_s", float("inf")), result["render_warm_s"]) < BUDGET_S
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_card.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"load_run (not rendering): {t_load:.3f} s")
    nan = float("nan")
    print(f"imports (jinja2, huggingface_hub, matplotlib; once per process): {cold.get('imports_s', nan):.3f} s")
    print(f"plot    first {cold.get('plot_first_s', nan):.3f} s   warm {result['plot_warm_median_s']:.3f} s")
    print(f"card    first {cold.get('card_first_s', nan):.3f} s   warm {result['card_warm_median_s']:.4f} s")
    print(f"render  first {cold.get('render_first_s', nan):.3f} s   warm {result['render_warm_s']:.3f} s   "
          f"(budget {BUDGET_S:.1f} s: {'ok' if result['within_budget'] else 'OVER'})")
    print(f"wrote {out / 'bench_card.json'}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    if "--child" in sys.argv:
        sys.exit(_cold_child())
    sys.exit(main())
