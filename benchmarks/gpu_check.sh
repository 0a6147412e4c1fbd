#!/usr/bin/env bash
# The GPU measurement in one command (under 8 minutes), one JSON:
#   bash benchmarks/gpu_check.sh [OUT.json]     (default: $OUT/gpu_check.json, else ./gpu_check.json)
# Parts: pytest -m gpu, the SmaraAD++ step at the paper's scale (fp32, bf16), AutoAttack seconds
# per 1000 images, a 4-trial tune at 0.25 GPU each (benchmarks/gpu_check.py says how each is
# measured). Python: $PYTHON, else python3. Without CUDA it refuses with one line, exit 2.
set -u
cd "$(dirname "$0")/.." || exit 2
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import sys
try:
    import torch
except ImportError:
    sys.exit(3)
sys.exit(0 if torch.cuda.is_available() else 4)' 2>/dev/null
case $? in
  0) ;;
  4) echo "gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a GPU machine" >&2
     exit 2 ;;
  *) echo "gpu_check: $py cannot import torch; set PYTHON to the project's interpreter" >&2
     exit 2 ;;
esac
out="${1:-${OUT:-.}/gpu_check.json}"
exec "$py" benchmarks/gpu_check.py "$out"
