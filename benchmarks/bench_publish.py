"""Publish a run with a 2 GB weights folder to the local Hub-compatible server, three times.

1. first publish (cold hash cache: every shard is hashed and uploaded),
2. re-publish with nothing changed (goal: < 5 % of the first, 0 bytes uploaded),
3. re-publish after rewriting one shard (only that shard is hashed and uploaded).

Each publish runs in its own process (``python -c``) so its peak RSS (``ru_maxrss`` from ``wait4``) is the
publisher's alone (goal: < 500 MB); the server runs in this process. The publisher reports the time spent
in ``publish()`` itself (which includes loading torch, scipy and matplotlib when the run has to be loaded:
an unchanged re-publish is decided from cached hashes and never imports them). A baseline process that
only does those imports shows how much of the peak RSS is the libraries rather than the publish.

Run: python benchmarks/bench_publish.py [--gb 2] [--shards 4] [--workdir DIR]
Writes benchmarks/out/publish.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hubserver import DEFAULT_TOKEN, HubServer  # noqa: E402

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from hubkit.publish.commit import publish  # what `hubkit publish` imports; the rest is loaded when needed
t1 = time.perf_counter()
r = publish(sys.argv[1], repo_id=sys.argv[2], with_weights=True, progress=False)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "publish_s": t2 - t1, "version": r.version,
                  "nothing_changed": r.nothing_changed, "planned_upload_bytes": r.uploaded_bytes,
                  "torch_imported": "torch" in sys.modules}))
"""

BASELINE = """
import hubkit.publish, hubkit.run, hubkit.directions, hubkit.card, torch, scipy.stats, matplotlib.pyplot  # noqa
import huggingface_hub, pandas, pyarrow  # noqa
"""

CHUNK = 64 * 1024 * 1024


def write_shard(path: Path, size: int, seed: int) -> None:
    """A valid safetensors file of ``size`` bytes of random uint8, written in 64 MB chunks (never whole)."""
    import numpy as np

    header = json.dumps({"__metadata__": {"format": "pt"},
                         "weight": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    rng = np.random.Generator(np.random.PCG64(seed))
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        left = size
        while left:
            n = min(CHUNK, left)
            fh.write(rng.bytes(n))
            left -= n


def make_run(work: Path, total_gb: float, shards: int) -> Path:
    run = work / "run"
    shutil.copytree(ROOT / "artifacts" / "refusal-abliteration", run)
    with open(run / "hubkit.yaml", "a") as fh:
        fh.write("weights: {path: model}\n")
    model = run / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3_5", "hidden_size": 2560}, indent=2))
    vocab = {f"tok{i}": i for i in range(50_000)}
    (model / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    per = int(total_gb * 1024**3) // shards
    for i in range(shards):
        write_shard(model / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", per, seed=i)
    return run


def run_child(code: str, args: list[str], env: dict[str, str]) -> dict:
    """Run ``python -c code args``; return its JSON line, wall time and peak RSS (MB)."""
    out = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=out, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode() if p.stderr else ""
    if p.returncode != 0:
        raise SystemExit(f"child failed ({p.returncode}):\n{err}")
    out.seek(0)
    lines = out.read().decode().strip().splitlines()
    data = json.loads(lines[-1]) if lines else {}
    data.update(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024)
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    opts = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hubkit-bench-publish-", dir=opts.workdir))
    try:
        t0 = time.perf_counter()
        run = make_run(work, opts.gb, opts.shards)
        gen_s = time.perf_counter() - t0
        weights = sum(f.stat().st_size for f in (run / "model").iterdir())
        hub = HubServer(work / "server")
        endpoint = hub.start()
        env = dict(os.environ, HF_ENDPOINT=endpoint, HF_TOKEN=DEFAULT_TOKEN, HF_HUB_DISABLE_XET="1",
                   HF_HOME=str(work / "hf_home"), HUBKIT_CACHE=str(work / "hubkit-cache"),
                   HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
        repo_id = "tester/bench-weights"
        rows: dict[str, dict] = {}
        baseline = run_child(BASELINE, [], env)
        for name, prep in (("first publish (cold hash cache)", None),
                           ("re-publish, nothing changed", None),
                           ("re-publish, one shard rewritten", "rewrite")):
            if prep == "rewrite":
                shard = sorted((run / "model").glob("*.safetensors"))[1]
                write_shard(shard, shard.stat().st_size - 8 - _header_len(shard), seed=1000)
            hub.clear_log()
            row = run_child(CHILD, [str(run), repo_id], env)
            row["uploaded_bytes"] = hub.lfs_upload_bytes()
            row["requests"] = len(hub.requests)
            rows[name] = row
        hub.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    first = rows["first publish (cold hash cache)"]
    again = rows["re-publish, nothing changed"]
    result = {"weights_bytes": weights, "shards": opts.shards, "generate_s": gen_s, "cpu_count": os.cpu_count(),
              "baseline_imports": baseline, "runs": rows,
              "republish_vs_first_publish_s": again["publish_s"] / first["publish_s"],
              "republish_vs_first_wall": again["wall_s"] / first["wall_s"]}
    (ROOT / "benchmarks" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "out" / "publish.json").write_text(json.dumps(result, indent=2))

    gb = weights / 1024**3
    print(f"weights folder: {gb:.2f} GB in {opts.shards} safetensors shards; {os.cpu_count()} cores\n")
    print("| run | publish() (s) | process wall (s) | bytes uploaded (LFS) | HTTP requests | peak RSS (MB) "
          "| torch loaded |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r in rows.items():
        print(f"| {name} → {r['version']}{' (unchanged)' if r['nothing_changed'] else ''} | {r['publish_s']:.2f} | "
              f"{r['wall_s']:.2f} | {r['uploaded_bytes']:,} | {r['requests']} | {r['peak_rss_mb']:.0f} | "
              f"{'yes' if r['torch_imported'] else 'no'} |")
    print(f"| imports only (torch, scipy, matplotlib, pandas, pyarrow, huggingface_hub) | – | "
          f"{baseline['wall_s']:.2f} | – | – | {baseline['peak_rss_mb']:.0f} | yes |")
    print(f"\nre-publish unchanged / first publish: {100 * result['republish_vs_first_publish_s']:.2f} % of "
          f"publish() time, {100 * result['republish_vs_first_wall']:.1f} % of process wall time")


def _header_len(path: Path) -> int:
    with open(path, "rb") as fh:
        return int.from_bytes(fh.read(8), "little")


if __name__ == "__main__":
    main()
