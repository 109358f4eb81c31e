"""How fast `hubkit --help` and `hubkit validate` (no tensors) start, and that they don't import torch.

Run: python benchmarks/bench_cli.py  (writes benchmarks/out/cli.json, prints a markdown table)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import sys\nsys.argv = ['hubkit'] + sys.argv[1:]\n"
         "try:\n    from hubkit.cli import main; main()\nexcept SystemExit:\n    pass\n"
         "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n")


def timed(args: list[str], repeat: int = 15) -> tuple[float, float, bool]:
    times, torch_seen = [], False
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        torch_seen |= "TORCH_IMPORTED" in p.stderr
    return statistics.median(times), min(times), torch_seen


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "hubkit.yaml").write_text("title: t\nstatus: positive\ncontrast:\n  - {file: c.jsonl, label: a}\n")
        (run / "c.jsonl").write_text("".join(f'{{"prompt": "p{i}"}}\n' for i in range(50)))
        rows = {
            "hubkit --help": timed(["--help"]),
            "hubkit validate (run without tensors)": timed(["validate", str(run)]),
        }
        t0 = time.perf_counter()
        for _ in range(15):
            subprocess.run([sys.executable, "-c", "pass"])
        floor = (time.perf_counter() - t0) / 15
    out = {"python_floor_s": floor}
    print("| command | median (s) | best (s) | imports torch |\n|---|---:|---:|---|")
    print(f"| python -c pass (floor) | {floor:.3f} | | no |")
    for name, r in rows.items():
        med, best, torch_seen = r
        out[name] = {"median_s": med, "best_s": best, "imports_torch": torch_seen}
        print(f"| {name} | {med:.3f} | {best:.3f} | {'yes' if torch_seen else 'no'} |")
    (ROOT / "benchmarks" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "out" / "cli.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
