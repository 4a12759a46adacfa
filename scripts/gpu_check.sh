#!/usr/bin/env bash
# The CUDA path of eqdeq, checked and timed in about 4 minutes on one GPU. Run it in the project's
# root with eqdeq importable (installed, or PYTHONPATH=$PWD) and torchdeq for the side-by-side step:
#   bash scripts/gpu_check.sh [OUTDIR]          (default OUTDIR: gpu-check)
# Each step runs under its own time limit and may fail alone; OUTDIR/summary.txt lists every step's
# status, time and last line, and OUTDIR/<step>.log its whole output.
#   gpu-tests       pytest -m gpu: tests/test_gpu.py (implicit gradients on the device against the CPU,
#                   the CT dot-product test at 128² and 256², bf16 training evaluated on the CPU, resume on
#                   CUDA within the kernels' rounding) and the cuda cases of the operator, solver and
#                   gradient tests (CPU–CUDA parity, float32 solver arithmetic under bf16 autocast)
#   ct-operator     A and Aᵀ of the CT operator on CUDA and on the CPU: time per A+Aᵀ and the ratio
#   default-fp32    the default `eqdeq train` on CUDA for at most 1 minute of training
#   default-bf16    the same under trainer.bf16=true (solver arithmetic stays float32)
#   compile         scripts/bench_compile.py on CUDA: eager, torch.compile, channels-last
#   torchdeq        scripts/bench_torchdeq.py on CUDA: eqdeq's implicit step against torchdeq's
#   paper-scale     `+scale=paper` (128², DnCNN depth 10 width 64, batch 16) for 20 steps
set -u
export PYTHONUNBUFFERED=1
out=${1:-gpu-check}; mkdir -p "$out"; summary="$out/summary.txt"; : > "$summary"
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2; local t0=$SECONDS status
  if timeout "$limit" "$@" > "$out/$name.log" 2>&1; then status=ok; else status="FAILED($?)"; fi
  printf '%-14s %-10s %4d s  %s\n' "$name" "$status" "$((SECONDS - t0))" "$(tail -1 "$out/$name.log" | cut -c1-160)" \
    | tee -a "$summary"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$summary"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$summary"

step gpu-tests 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_physics.py \
  tests/test_solvers.py tests/test_deq_gradients.py
step ct-operator 45 python3 - <<'PY'
import time
import torch
from eqdeq_cli.physics import CTRadon
def per_call(ct, x, n):
    for _ in range(2):
        ct.A_adjoint(ct.A(x))
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        ct.A_adjoint(ct.A(x))
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n
for size, views, batch in [(64, 25, 16), (128, 60, 32), (256, 90, 16)]:
    ct = CTRadon(img_size=size, n_views=views)
    x = torch.rand(batch, 1, size, size)
    cpu = per_call(ct, x, 3)
    gpu = per_call(ct.cuda(), x.cuda(), 20)
    print(f"CT {size}² {views} views batch {batch}: A+Aᵀ cpu {cpu * 1e3:.1f} ms, cuda {gpu * 1e3:.2f} ms, x{cpu / gpu:.0f}")
PY
for mode in fp32: bf16:trainer.bf16=true; do
  name=${mode%%:*}; extra=${mode#*:}
  step "default-$name" 100 python3 -m eqdeq_cli.cli train trainer.device=cuda trainer.progress=false \
    trainer.max_minutes=1 $extra "hydra.run.dir=$out/run-$name"
done
step compile 90 python3 scripts/bench_compile.py --device cuda --repeats 5 --variants eager compile channels_last
step torchdeq 60 python3 scripts/bench_torchdeq.py --device cuda --repeats 8 --channels-last
step paper-scale 90 python3 -m eqdeq_cli.cli train +scale=paper trainer.device=cuda trainer.max_steps=20 \
  trainer.eval_every=0 trainer.progress=false evaluation.n_images=0 "hydra.run.dir=$out/run-paper"
for run in "$out"/run-*; do
  python3 - "$run" <<'PY' | tee -a "$summary"
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
try:
    m = json.loads((run / "metrics.json").read_text())
except (OSError, ValueError) as err:
    print(f"{run.name}: no metrics ({err})")
else:
    keys = ("steps", "train_time_s", "psnr_init", "psnr", "converged_frac", "iters_mean", "residual_mean")
    print(f"{run.name}: " + ", ".join(f"{k}={m[k]:.4g}" if isinstance(m.get(k), float) else f"{k}={m.get(k)}"
                                      for k in keys))
PY
done
