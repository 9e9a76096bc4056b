#!/usr/bin/env bash
# One short CUDA check: CUDA tests, then the benchmark cases on the GPU (with and without the Triton scan).
# Usage: bash bench/gpu_check.sh OUT_DIR
out=${1:-.}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_ide.py tests/test_neuron.py 2>&1 | tail -15
timeout 150 python3 -m bench --device cuda --quick --cases eval,train,schedule --out "$out/bench_cuda.jsonl"
SPIKINGBERT_NO_TRITON=1 timeout 60 python3 -m bench --device cuda --quick --cases eval --sizes small --out "$out/bench_cuda_no_triton.jsonl"
timeout 90 python3 -m bench --device cuda --quick --cases memory --out "$out/bench_cuda.jsonl"
