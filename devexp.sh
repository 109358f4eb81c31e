export PYTHONUNBUFFERED=1
W=/tmp/b; mkdir -p $W
python3 benchmarks/make_synthetic_checkpoint.py $W/q35 | tail -1
python3 benchmarks/bench_regenerate.py --make-recipe $W/recipe 2560 22
for i in 1 2; do
/usr/bin/time -f "python -c pass %e" python3 -c pass
/usr/bin/time -f "import torch %e" python3 -c "import torch"
/usr/bin/time -f "import torch+cuda init %e" python3 -c "import torch; torch.zeros(1, device='cuda')"
for d in cpu cuda; do
rm -rf $W/o; cat $W/q35/*.safetensors > /dev/null
/usr/bin/time -f "process wall %e s" python3 devphases.py $d $W/q35 $W/recipe $W/o 2>&1 | grep -v Warn | grep -v frombuffer
done; done
