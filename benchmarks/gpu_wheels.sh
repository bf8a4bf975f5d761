#!/usr/bin/env bash
# Download the wheels benchmarks/gpu.sh installs on a GPU machine that cannot reach PyPI (its image has
# torch, onnx, onnxscript and the CPU onnxruntime), split to fit a 64 MiB transfer; gpu.sh joins them.
#   bash benchmarks/gpu_wheels.sh [DIR] [PYTHON_VERSION]      (run where PyPI is reachable, with the dev venv)
# The versions are those installed here: onnxruntime-gpu matching onnxruntime, and the closure of what
# graphlens' tests and TransformerLens need, without torch, the nvidia-* libraries, onnx and numpy.
set -euo pipefail
DIR="${1:-shared/wheels}"
PYVER="${2:-3.12}"
mkdir -p "$DIR"
mapfile -t PINS < <(python3 - <<'PYEOF'
import re
from importlib import metadata
roots = ["transformer-lens", "transformers", "onnx-graphsurgeon", "tokenizers", "jaxtyping", "click", "tqdm",
         "pytest", "ml_dtypes", "onnx-ir"]
skip = re.compile(r"^(torch|triton|nvidia-.*|onnx|onnxruntime|onnxscript|numpy|setuptools|pip)$")
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
seen, todo = {}, list(roots)
while todo:
    name = norm(todo.pop())
    if name in seen or skip.match(name):
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    seen[name] = dist.version
    for req in dist.requires or []:
        if "extra ==" not in req:
            todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
print(f"onnxruntime-gpu=={metadata.version('onnxruntime')}")
for name, version in sorted(seen.items()):
    print(f"{name}=={version}")
PYEOF
)
echo "downloading ${#PINS[@]} wheels for Python $PYVER into $DIR" >&2
python3 -m pip download --quiet --only-binary=:all: --no-deps --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$DIR" "${PINS[@]}"
for wheel in "$DIR"/*.whl; do
  if [ "$(stat -c %s "$wheel")" -gt $((60 * 1024 * 1024)) ]; then
    split -b 60M "$wheel" "$wheel.part-" && rm "$wheel"
  fi
done
du -sh "$DIR"
