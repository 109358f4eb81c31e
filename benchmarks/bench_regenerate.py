"""Benchmark ``hubkit regenerate`` against a plain copy and the transformers recipe, side by side.

On a synthetic checkpoint with the real Qwen3.5-4B shapes (``make_synthetic_checkpoint.py``: 32 blocks,
~9.3 GB bf16; ``--layers 8``: 3.96 GB):

* **copy**: ``shutil.copyfile`` of every shard + fsync, the floor (every byte read and written once);
* **hubkit**: ``python -m hubkit.cli regenerate``, for each recipe of ``--recipes`` (``seed``: embedding +
  attention out + MLP down, weight 1, norm none; ``weighted``: the same at weight 0.7; ``pre`` /
  ``preserve``: the norm-preserving recipe on attention out + MLP down);
* **transformers**: ``from_pretrained`` → edit the modules the seed way → ``save_pretrained`` → sync.

Each run is a child process: wall time includes interpreter start and imports, and its peak RSS comes from
``os.wait4``. Runs alternate (copy, hubkit, copy, hubkit, …) so drift in the machine's load hits both; the
source shards are read once before each run (warm page cache) unless ``--cold`` drops the whole page cache
(root: the checkpoint and every library the run imports come from disk) or ``--cold-checkpoint`` drops only
the checkpoint's pages (the libraries stay cached, as on a machine in use).
``--small-layers N`` also runs hubkit on an N-block variant, to show peak RSS does not grow with the model.
``--baseline DIR`` runs an earlier hubkit package too (``-before``), alternating with this one. Shard sha256s
of every hubkit run are compared: each recipe's runs must agree, and the seed recipe's with the baseline's.
Before the timed runs one untimed ``regenerate`` lets numba compile and cache the kernels (its wall time is
reported as ``first_run_s``: what the first run on a machine pays once). ``--lora`` also times
``hubkit export lora`` of every recipe on the same checkpoint (it reads only the targeted tensors).

    python benchmarks/bench_regenerate.py --workdir /tmp/bench [--layers 8] [--recipes seed,pre,preserve]
        [--repeats 3] [--baseline DIR] [--transformers none]

Prints a markdown table and writes ``benchmarks/out/regenerate-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from pagecache import drop_all, drop_checkpoint, warm  # noqa: E402

LAYER = 22  # the seed recipe's layer (block convention here)
#: the recipes --recipes can name: their keys in hubkit.json's regenerate record (beyond direction and layer)
RECIPES: dict[str, dict] = {
    "seed": {"targets": ["embed_tokens", "attn_out", "mlp_down"]},
    "weighted": {"targets": ["embed_tokens", "attn_out", "mlp_down"], "weight": 0.7},
    "pre": {"targets": ["attn_out", "mlp_down"], "norm": "pre"},
    "preserve": {"targets": ["attn_out", "mlp_down"], "norm": "preserve"},
}


def _child(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run argv; wall seconds, peak RSS (MiB) of the child, exit status, and its output's tail."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
        "rc": proc.returncode,
        "user_s": round(ru.ru_utime, 1),
        "sys_s": round(ru.ru_stime, 1),
        "tail": out.decode(errors="replace")[-1500:],
    }


COPY_SNIPPET = """
import os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for name in sorted(os.listdir(src)):
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
for name in sorted(os.listdir(dst)):
    fd = os.open(os.path.join(dst, name), os.O_RDONLY); os.fsync(fd); os.close(fd)
"""

TRANSFORMERS_SNIPPET = """
import os, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText
ckpt, out, rpath, device = sys.argv[1:5]
r = next(iter(load_file(rpath).values())).double()
r = (r / r.norm()).float().to(device)
model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.bfloat16).to(device)
lm = model.model.language_model
with torch.no_grad():
    w = lm.embed_tokens.weight
    w.copy_((w.float() - torch.outer(w.float() @ r, r)).to(w.dtype))
    for layer in lm.layers:
        attn = getattr(layer, "self_attn", None) or layer.linear_attn
        for mod in (getattr(attn, "o_proj", None) or attn.out_proj, layer.mlp.down_proj):
            wf = mod.weight.float()
            mod.weight.copy_((wf - torch.outer(r, r @ wf)).to(mod.weight.dtype))
model.save_pretrained(out)
os.sync()
"""


def _recipe(root: Path, d: int, layer: int = LAYER, recipe: str = "seed") -> tuple[Path, Path]:
    """A staged recipe (hubkit.json + canonical direction) for ``layer`` of a d-dim model.

    Runs in a child process: this process stays free of torch, because a child's peak RSS (ru_maxrss) starts
    from its parent's size at fork.
    """
    subprocess.run(
        [sys.executable, __file__, "--make-recipe", str(root), str(d), str(layer), recipe],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return root, root / "vectors" / "refusal.safetensors"


def _make_recipe(root: Path, d: int, layer: int, recipe: str) -> None:
    import torch

    from hubkit.formats.directions import DirectionSet, write_canonical

    if root.exists():
        shutil.rmtree(root)
    g = torch.Generator().manual_seed(0)
    ds = DirectionSet("refusal", {layer: torch.randn(d, generator=g)}, selected_layer=layer)
    path = root / "vectors" / "refusal.safetensors"
    write_canonical(ds, path)
    meta = {
        "hubkit_version": "0.1.0",
        "version": "v1",
        "run": {"title": "benchmark", "base_model": "Qwen/Qwen3.5-4B", "base_model_revision": None},
        "files": [],
        "directions": [
            {
                "name": "refusal",
                "file": "vectors/refusal_dir.pt",
                "canonical": "vectors/refusal.safetensors",
                "layers": [layer],
                "d": d,
                "selected_layer": layer,
                "layer_convention": "block",
                "unit_norm": False,
            }
        ],
        "regenerate": {
            "direction": "refusal",
            "layer": layer,
            "layer_convention": "block",
            **RECIPES[recipe],
            "base_model": "Qwen/Qwen3.5-4B",
            "base_model_revision": None,
        },
    }
    (root / "hubkit.json").write_text(json.dumps(meta, indent=2))


def _card_hashes(out: Path) -> dict[str, str]:
    text = (out / "README.md").read_text()
    return dict(re.findall(r"\| `([^`]+\.safetensors)` \| `([0-9a-f]{64})` \|", text))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--make-recipe":
        _make_recipe(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--workdir", type=Path, required=True, help="Where the checkpoint and outputs go (~30 GB)."
    )
    ap.add_argument("--layers", type=int, default=32, help="decoder blocks of the checkpoint (32: 9.3 GB, 8: 4 GB)")
    ap.add_argument("--recipes", default="seed", help=f"comma-separated, of {', '.join(RECIPES)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--transformers", default="cpu", help="device(s) of the transformers recipe; 'none' skips")
    ap.add_argument("--small-layers", type=int, default=8, help="0 skips the RSS-vs-size run")
    ap.add_argument("--cold", action="store_true", help="drop the whole page cache before each run (root): the "
                    "checkpoint and every library the run imports are read from disk")
    ap.add_argument("--cold-checkpoint", action="store_true",
                    help="drop only the checkpoint's pages before each run (the libraries stay cached)")
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a folder holding an earlier hubkit package (git archive REV hubkit templates | tar -x -C DIR): "
        "also run it as hubkit-DEVICE-before, alternating with the current one (an A/B in one run)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--lora", action="store_true", help="also time `hubkit export lora` of every recipe")
    ap.add_argument("--moe", action="store_true",
                    help="a Qwen3-30B-A3B-shaped MoE checkpoint (d=2048, 128 experts) of --layers blocks instead")
    ap.add_argument("--label", default=platform.node() or "local")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from make_synthetic_checkpoint import config_for, moe_config_for, write_checkpoint

    if args.moe:
        config_for = moe_config_for  # noqa: F811 - the same layer count, the MoE's shapes
    hidden = 2048 if args.moe else 2560
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / (f"qwen3-moe-{args.layers}L-synthetic" if args.moe else
                   "qwen3.5-4b-synthetic" if args.layers == 32 else f"qwen3.5-{args.layers}L-synthetic")
    gen_s = None
    if not (ckpt / "model.safetensors.index.json").is_file():
        t = time.perf_counter()
        write_checkpoint(ckpt, config_for(args.layers), int(3e9), log=lambda *a: None)
        gen_s = round(time.perf_counter() - t, 1)
    names = [n for n in args.recipes.split(",") if n]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        ap.error(f"--recipes: unknown {', '.join(unknown)} (known: {', '.join(RECIPES)})")
    layer = min(LAYER, args.layers - 2)
    recipes = {n: _recipe(work / f"recipe-{n}", hidden, layer, n) for n in names}
    rfile = recipes[names[0]][1]
    tdevs_list = [] if args.transformers == "none" else args.transformers.split(",")
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}

    results: dict[str, list[dict]] = {}
    hashes: dict[str, list[dict[str, str]]] = {}

    def run(name: str, argv: list[str], out: Path, src: Path = ckpt, child_env: dict[str, str] = env) -> None:
        if out.exists():
            shutil.rmtree(out)
        cold = drop_all() if args.cold else drop_checkpoint(src) if args.cold_checkpoint else False
        if not (args.cold or args.cold_checkpoint):
            warm(src)
        res = _child(argv, child_env)
        res["cold_cache"] = cold
        if res["rc"] != 0:
            print(f"{name} failed (rc {res['rc']}):\n{res['tail']}", file=sys.stderr)
        elif name.startswith("hubkit"):
            res["shard_sha256"] = _card_hashes(out)
            if src == ckpt:
                hashes.setdefault(name, []).append(res["shard_sha256"])
        results.setdefault(name, []).append(res)
        print(f"  {name}: {res['wall_s']} s, peak RSS {res['peak_rss_mib']} MiB", flush=True)
        shutil.rmtree(out, ignore_errors=True)

    versions = [("", env)]
    if args.baseline:
        versions.append(("-before", {**env, "PYTHONPATH": str(args.baseline.resolve())}))
    out = work / "out"
    first = _child([py, "-P", "-m", "hubkit.cli", "regenerate", str(recipes[names[0]][0]), "--base-model", str(ckpt),
                    "--out", str(out), "--no-progress"], env)
    shutil.rmtree(out, ignore_errors=True)
    print(f"  first run (numba compiles and caches the kernels, untimed): {first['wall_s']} s", flush=True)
    for _ in range(args.repeats):
        run("copy", [py, "-c", COPY_SNIPPET, str(ckpt), str(out)], out)
        for name, (recipe, _) in recipes.items():
            for suffix, version_env in versions:
                argv = [py, "-P", "-m", "hubkit.cli", "regenerate", str(recipe), "--base-model", str(ckpt)]
                run(f"hubkit-{name}{suffix}", [*argv, "--out", str(out), "--no-progress"], out,
                    child_env=version_env)
    if args.lora:
        for name, (recipe, _) in recipes.items():
            run(f"lora-{name}", [py, "-P", "-m", "hubkit.cli", "export", "lora", str(recipe), "--base-model", str(ckpt),
                                 "-o", str(out)], out)
    for dev in tdevs_list:
        run(
            f"transformers-{dev}", [py, "-c", TRANSFORMERS_SNIPPET, str(ckpt), str(out), str(rfile), dev], out
        )

    small = None
    if args.small_layers:
        small = work / f"qwen3.5-{args.small_layers}L-synthetic"
        if not (small / "model.safetensors.index.json").is_file():
            write_checkpoint(small, config_for(args.small_layers), int(3e9), log=lambda *a: None)
        small_recipe, _ = _recipe(work / "recipe-small", hidden, args.small_layers // 2, names[0])
        run(
            f"hubkit-{names[0]}-{args.small_layers}L",
            [py, "-m", "hubkit.cli", "regenerate", str(small_recipe), "--base-model", str(small), "--out", str(out),
             "--no-progress"],
            out,
            src=small,
        )

    def median(name: str) -> float | None:
        ok = [r["wall_s"] for r in results.get(name, []) if r["rc"] == 0]
        return round(statistics.median(ok), 2) if ok else None  # the mean of the middle two for an even count

    copy_s = median("copy")
    rows = []
    for name in results:
        m = median(name)
        rss = max(r["peak_rss_mib"] for r in results[name])
        ratio = f"{m / copy_s:.2f}×" if m and copy_s else "–"
        rows.append(f"| {name} | {m if m is not None else 'failed'} | {ratio} | {rss:.0f} |")
    speedups = {}
    for name in names:
        h = median(f"hubkit-{name}")
        for tdev in tdevs_list:
            tr = median(f"transformers-{tdev}")
            if h and tr:
                speedups[f"transformers-{tdev} / hubkit-{name}"] = round(tr / h, 2)
        before = median(f"hubkit-{name}-before")
        if h and before:
            speedups[f"hubkit-{name}-before / hubkit-{name}"] = round(before / h, 2)

    def distinct(name: str) -> int:
        return len({json.dumps(h, sort_keys=True) for h in hashes.get(name, []) if h})

    deterministic = {name: distinct(f"hubkit-{name}") == 1 for name in names}
    seed_as_before = None
    if "seed" in names and hashes.get("hubkit-seed-before"):
        seed_as_before = {json.dumps(h, sort_keys=True) for h in hashes["hubkit-seed"] + hashes["hubkit-seed-before"]}
        seed_as_before = len(seed_as_before) == 1

    probe = "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    torch_version, _, gpu = (
        subprocess.run([py, "-c", probe], capture_output=True, text=True).stdout.strip().partition(" ")
    )
    report = {
        "label": args.label,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch_version,
            "cuda": gpu or None,
            "load_avg_end": os.getloadavg(),
        },
        "checkpoint": {
            "bytes": _size(ckpt),
            "shards": len(list(ckpt.glob("*.safetensors"))),
            "generate_s": gen_s,
        },
        "small_checkpoint_bytes": _size(small) if small else None,
        "cold_cache": "all" if args.cold else "checkpoint" if args.cold_checkpoint else False,
        "first_run_s": first["wall_s"],
        "runs": results,
        "median_wall_s": {k: median(k) for k in results},
        "ratio_to_copy": {k: round(median(k) / copy_s, 3) for k in results if median(k) and copy_s},
        "speedups": speedups,
        "hubkit_shard_sha256": {name: (hashes.get(f"hubkit-{name}") or [None])[0] for name in names},
        "deterministic_per_recipe": deterministic,
        "seed_bytes_as_baseline": seed_as_before,
    }
    print(
        f"\n{_size(ckpt) / 1e9:.2f} GB checkpoint, {report['checkpoint']['shards']} shards, "
        f"{'cold' if args.cold else 'checkpoint-cold' if args.cold_checkpoint else 'warm'} page cache, {args.label}\n"
    )
    print("| run | median wall (s) | vs copy | peak RSS (MiB) |\n| --- | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(f"\nfirst run on this machine (numba compiling the kernels, untimed): {first['wall_s']} s")
    for k, v in speedups.items():
        print(f"\nspeed-up, {k}: {v}×")
    print(f"\nhubkit shard hashes identical across each recipe's runs: {deterministic}")
    if seed_as_before is not None:
        print(f"seed recipe: the same shard hashes as the baseline: {seed_as_before}")
    dest = args.json or HERE / "out" / f"regenerate-{args.label}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {dest}")
    if not args.keep:
        shutil.rmtree(ckpt, ignore_errors=True)
        if small:
            shutil.rmtree(small, ignore_errors=True)


if __name__ == "__main__":
    main()
