#!/usr/bin/env bash
# The GPU checks in one go, on a machine with an NVIDIA GPU (under ten minutes):
#   1. onnxruntime-gpu in place of the CPU onnxruntime (from a local wheel when PyPI is unreachable),
#      with the CUDA/cuDNN libraries torch's nvidia-* packages ship put on the loader path;
#   2. the CUDA tests (IOBinding run_with_cache, device-resident KV cache in generate, fp16 bundles);
#   3. forward / run_with_cache / generate vs TransformerLens on CUDA (and GenAI CUDA when installed).
#
#   bash benchmarks/gpu.sh [--wheels DIR] [--skip-bench] [--dry-run]
#
# --dry-run (any machine, no GPU needed, installs nothing): joins split wheels in DIR, runs the loader-path
# and session probe on the CPU provider, checks that every CUDA test named below exists (pytest
# --collect-only), and runs the benchmark's code path on the CPU (one repeat, no GenAI).
#
# Offline machines: put the wheels in DIR (default: shared/wheels, then benchmarks/wheels). A wheel over
# the transfer limit may be split (`split -b 60M onnxruntime_gpu-….whl onnxruntime_gpu-….whl.part-`);
# the parts are joined here. `bash benchmarks/gpu_wheels.sh DIR` downloads what this script needs.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=""
BENCH=1
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --skip-bench) BENCH=0; shift ;;
    --dry-run) DRY=1; shift ;;
    *) echo "usage: bash benchmarks/gpu.sh [--wheels DIR] [--skip-bench] [--dry-run]" >&2; exit 2 ;;
  esac
done
for candidate in "$WHEELS" shared/wheels benchmarks/wheels; do
  if [ -n "$candidate" ] && [ -d "$candidate" ]; then WHEELS="$candidate"; break; fi
done
PY="${PYTHON:-python3}"
say() { echo "== gpu.sh: $*" >&2; }
started=$(date +%s)

# never swap a CPU machine's onnxruntime for the GPU build
if [ "$DRY" = 1 ]; then
  say "dry run: no GPU needed, nothing installed"
elif ! command -v nvidia-smi >/dev/null || ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2; then
  say "no NVIDIA GPU here (nvidia-smi missing or failing): nothing to do"
  exit 1
fi
"$PY" -c "import sys; print(sys.version)" >&2

# ---- 1. packages -------------------------------------------------------------------------------
join_wheels() {  # wheels split to fit a transfer (NAME.whl.part-aa, -ab, …) → NAME.whl, checked as a zip
  [ -n "$WHEELS" ] || return 0
  for first in "$WHEELS"/*.whl.part-aa; do
    [ -e "$first" ] || continue
    whole="${first%.part-aa}"
    if [ ! -e "$whole" ]; then
      say "joining $(basename "$whole")"
      cat "${whole}".part-* > "$whole.tmp"
      "$PY" -c "import sys, zipfile; sys.exit(zipfile.ZipFile(sys.argv[1]).testzip() is not None)" "$whole.tmp" \
        || { say "$(basename "$whole") joined from its parts is not a valid wheel (a part missing?)"; rm -f "$whole.tmp"; exit 1; }
      mv "$whole.tmp" "$whole"
    fi
  done
}
join_wheels
pip_install() {  # local wheels first, the index when reachable
  if [ -n "$WHEELS" ]; then
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "$@" && return 0
    say "not all of '$*' is in $WHEELS; trying the package index"
  fi
  timeout 600 "$PY" -m pip install --quiet "$@"
}

has_cuda_ep() { "$PY" - <<'EOF'
import onnxruntime as ort, sys
sys.exit(0 if "CUDAExecutionProvider" in ort.get_available_providers() else 1)
EOF
}

if [ "$DRY" = 1 ]; then
  :
elif ! has_cuda_ep 2>/dev/null; then
  say "installing onnxruntime-gpu (replaces the CPU onnxruntime)"
  "$PY" -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu 2>/dev/null || true
  pip_install --no-deps onnxruntime-gpu || {
    say "cannot install onnxruntime-gpu: no wheel in '${WHEELS:-<none>}' and no package index. Carry the wheel" \
        "(bash benchmarks/gpu_wheels.sh shared/wheels here, then the parts to this machine) and run again."
    exit 1
  }
fi
# graphlens and what its tests need, without touching the image's torch/onnx
[ "$DRY" = 1 ] || "$PY" -m pip install --quiet --no-deps -e . 2>/dev/null || pip_install --no-deps -e .
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"onnx_graphsurgeon": "onnx-graphsurgeon", "tokenizers": "tokenizers", "click": "click", "jaxtyping": "jaxtyping",
        "tqdm": "tqdm", "transformers": "transformers", "onnxscript": "onnxscript", "pytest": "pytest",
        "transformer_lens": "transformer-lens==3.9.0", "ml_dtypes": "ml_dtypes", "onnx_ir": "onnx-ir"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  if [ "$DRY" = 1 ]; then say "would install: $missing"; else say "installing $missing"; pip_install $missing; fi
fi

# CUDA 12 / cuDNN 9 libraries: those of torch's nvidia-* packages, when the system has none
NVIDIA_LIBS=$("$PY" - <<'EOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))})))
EOF
)
export LD_LIBRARY_PATH="${NVIDIA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "loader path from nvidia-* packages: ${NVIDIA_LIBS:-<none>}"
EP=CUDAExecutionProvider
[ "$DRY" = 1 ] && EP=CPUExecutionProvider
EP="$EP" "$PY" - <<'EOF'
import os
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
print("onnxruntime", ort.__version__, ort.get_available_providers())
graph = helper.make_graph([helper.make_node("MatMul", ["a", "a"], ["b"])], "probe",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 2])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
model.ir_version = 10
ep = os.environ["EP"]
session = ort.InferenceSession(model.SerializeToString(), providers=[ep])
assert session.get_providers()[0] == ep, f"{ep} did not load: {session.get_providers()}"
print(f"a session on {ep} runs:", session.run(None, {"a": np.eye(2, dtype=np.float32)})[0].tolist())
EOF

# ---- 2. the CUDA tests ---------------------------------------------------------------------------
CUDA_TESTS=(tests/test_device.py
  "tests/test_generation.py::test_cuda_generation_equals_cpu_and_keeps_the_cache_on_the_device"
  "tests/test_bundle.py::test_float16_export_runs_close_to_float32"
  "tests/test_scale.py::test_cuda_split_and_mapped_weights_equal_cpu"
  "tests/test_scale.py::test_bfloat16_bundle_on_cuda_is_close_to_hf")
if [ "$DRY" = 1 ]; then
  say "CUDA tests (dry run: they exist)"
  "$PY" -m pytest -q --collect-only "${CUDA_TESTS[@]}" | tail -n 1
else
  say "CUDA tests"
  "$PY" -m pytest -q -rs "${CUDA_TESTS[@]}"
fi

# ---- 3. ratios -----------------------------------------------------------------------------------
if [ "$BENCH" = 1 ] && [ "$DRY" = 1 ]; then
  say "benchmark code path on the CPU (dry run)"
  "$PY" -m benchmarks.bench_gpu --device cpu --repeats 1 --no-genai
elif [ "$BENCH" = 1 ]; then
  say "benchmark (graphlens vs TransformerLens on CUDA)"
  "$PY" -m benchmarks.bench_gpu
fi
say "done in $(( $(date +%s) - started )) s"
