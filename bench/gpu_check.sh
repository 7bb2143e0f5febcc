#!/usr/bin/env bash
# Everything affiner can only check on an NVIDIA GPU, in one call that fits a short lease:
# the GPU card, the `gpu`-marked tests (NVML, CUDA context, bf16, OOM recovery and the run's own
# out-of-memory back-off, packing and the fused loss on CUDA, 4-bit and 8-bit
# LoRA, one real-shape cell of the peak bench, DDP and FSDP over two GPUs or, on one GPU, the
# two-process CPU run and the FSDP plan) and the planner's accuracy matrix
# (bench/memory_peak.py --device cuda), each row written to a JSONL file as soon as it is
# measured; then, if at least 200 s are left, the throughput bench on CUDA (bench/throughput.py
# --device cuda: Trainer+peft, TRL, the runner and its packing/loss-kernel ablations on a
# SmolLM2-135M-shaped model with random weights, since no weights reach the GPU machine).
#
#   bash bench/gpu_check.sh [RESULTS_DIR]       (default: $OUT, else bench/results/gpu)
#
# Wheels the GPU machine lacks (bitsandbytes for QLoRA and 8-bit, liger-kernel for the fused
# loss; trl, datasets, tomli-w and chatterbot-corpus for the throughput bench) are installed
# from .whl/ when it holds any. DEADLINE (seconds, default 540) is the time the whole script may
# take: the memory bench gets what is left of it less THROUGHPUT_SECONDS (default 240, 0 skips
# the throughput bench) and a minute, and starts no new cell once its budget is spent. A second
# call with the same RESULTS_DIR (its memory_cuda.jsonl copied back) measures only the cells
# not yet done.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
deadline=${DEADLINE:-540}
throughput_seconds=${THROUGHPUT_SECONDS:-240}
results=${1:-${OUT:-bench/results/gpu}}
mkdir -p "$results"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/affiner-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/affiner-site
fi
# affiner itself: installed as `affiner.*` (pyproject maps the top-level folders). Without an
# install, lay the same namespace over this tree with links, which needs no build step.
if ! python3 -c "import affiner.planner" 2>/dev/null; then
  ns=/tmp/affiner-src/affiner
  mkdir -p "$ns"
  for room in planner runner tui; do ln -sfn "$PWD/$room" "$ns/$room"; done
  for file in __init__.py __main__.py; do ln -sf "$PWD/tui/_root/$file" "$ns/$file"; done
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/affiner-src"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,compute_cap --format=csv \
  | tee "$results/nvidia-smi.csv"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, '· transformers', transformers.__version__, '· peft', peft.__version__)"

python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="" tests/runner/test_gpu_real.py \
  tests/runner/test_batching_gpu.py tests/runner/test_distributed_gpu.py \
  tests/test_oom_backoff.py 2>&1 \
  | tee "$results/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

# Several processes: with two GPUs or more, test_distributed_gpu.py above ran DDP and FSDP on
# CUDA. With one, the two-process CPU path (gloo) runs here instead, and the FSDP plan over two
# of these GPUs is recorded beside it.
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
if [ "$gpus" -lt 2 ]; then
  python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/runner/test_distributed_run.py 2>&1 \
    | tee "$results/distributed-cpu.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || tests_rc=1
fi
python3 -m affiner plan --model 7B --gpus 2 --sharding fsdp 2>&1 | tee "$results/plan-fsdp-2gpus.txt"

left=$(( deadline - ($(date +%s) - started) - 60 - throughput_seconds ))
if [ "$left" -gt 0 ]; then
  python3 bench/memory_peak.py --device cuda --jsonl "$results/memory_cuda.jsonl" --resume \
    --budget "$left" --out "$results/memory_cuda.json" 2>"$results/memory_cuda.stderr"
  bench_rc=$?
  tail -n 5 "$results/memory_cuda.stderr"
else
  echo "gpu_check: no time left for the accuracy matrix" >&2
  bench_rc=1
fi

# Throughput on CUDA: every way on the chat rows, one process each; the stderr keeps its
# progress lines. Bounded by what is left of DEADLINE (a way cut short is lost, not the rest).
left=$(( deadline - ($(date +%s) - started) ))
throughput_rc=0
if [ "$throughput_seconds" -gt 0 ] && [ "$left" -ge 200 ]; then
  timeout "$(( left - 10 ))" python3 bench/throughput.py --device cuda --model smollm2-shape \
    --sets chat --rows 128 --workdir /tmp/affiner-throughput --save "$results/throughput_cuda" \
    2>"$results/throughput_cuda.stderr"
  throughput_rc=$?
  tail -n 5 "$results/throughput_cuda.stderr"
elif [ "$throughput_seconds" -gt 0 ]; then
  echo "gpu_check: $left s left, under the throughput bench's 200 s: skipped" >&2
fi
echo "gpu_check: tests exit $tests_rc, bench exit $bench_rc, throughput exit $throughput_rc," \
  "$(( $(date +%s) - started )) s"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$throughput_rc" -eq 0 ]
