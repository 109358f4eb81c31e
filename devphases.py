import time, sys, os, shutil
T0 = time.perf_counter()
import torch
T1 = time.perf_counter()
from hubkit import regenerate as rg, abliterate as ab
T2 = time.perf_counter()
dev, ck, recipe, out = sys.argv[1:5]
orig, fs = ab.execute_plan, {"fsync": 0.0}
ofs = os.fsync
def fsync(fd):
    t = time.perf_counter(); ofs(fd); fs["fsync"] += time.perf_counter() - t
ab.os.fsync = fsync
def timed(*a, **k):
    t = time.perf_counter(); r = orig(*a, **k); fs["exec"] = time.perf_counter() - t; return r
rg.execute_plan = timed
t = time.perf_counter()
if dev == "cuda":
    torch.zeros(1, device="cuda"); fs["cuda_init"] = time.perf_counter() - t
t = time.perf_counter()
rg.regenerate(recipe, base_model=ck, out=out, progress=False, device=dev)
T3 = time.perf_counter()
print(f"{dev}: start->main {T0:.2f}? import torch {T1-T0:.2f} hubkit {T2-T1:.2f} regenerate {T3-t:.2f} " + " ".join(f"{k} {v:.2f}" for k, v in fs.items()), flush=True)
print(f"main done at {time.perf_counter()-T0:.2f}", flush=True)
