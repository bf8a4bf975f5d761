"""Peak resident memory and time of ``graphlens export`` (with the decoder graph), measured in a subprocess.

    python -m benchmarks.export_memory [--shape tinyllama|llama-150m] [--dtype float32] [--cap-gb 9] [--genai]

Builds a random Llama of the given shape (``save_pretrained`` into ``benchmarks/.cache``), exports it in
a child process and reports the child's peak RSS (``ru_maxrss``) against the exported weights' bytes
(``model.onnx.data``, read by both graphs). ``baseline`` is the child's RSS after importing torch,
transformers and graphlens, before loading the model; ``ratio`` = (peak − baseline) / weights.
A watchdog kills the child when its RSS passes ``--cap-gb`` (the machine is shared).
``--genai`` also runs onnxruntime-genai's model builder (``--genai-python``: a venv that has it) on the
same folder, measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import CACHE, log

SHAPES = {
    # TinyLlama-1.1B: 22 × 2048, GQA 32/4, MLP 5632, vocab 32000 (4.4 GB of fp32 weights)
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    # ≈ 150M parameters (0.6 GB fp32)
    "llama-150m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=4, vocab_size=32000, max_position_embeddings=1024),
}

_CHILD = """
import json, sys
import torch, transformers, onnx
import graphlens.export.pipeline as pipeline
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
print(json.dumps({"baseline": rss()}), flush=True)
pipeline.export_bundle(sys.argv[1], sys.argv[2], dtype=sys.argv[3], progress=None)
"""


def llama_folder(shape: str, dtype: str = "float32") -> Path:
    """A random Llama of ``SHAPES[shape]`` saved with save_pretrained (built once, cached)."""
    folder = CACHE / f"llama-{shape}-{dtype}"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        log(f"building a random Llama ({shape}, {dtype})")
        torch.manual_seed(0)
        config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False)
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model = model.to_empty(device="cpu").to(getattr(torch, dtype))
        with torch.no_grad():
            for param in model.parameters():  # random init without HF's slow per-module init
                param.normal_(0, 0.02) if param.ndim > 1 else param.fill_(1.0)
        model.save_pretrained(folder)
        del model
    if not (folder / "tokenizer.json").is_file():  # GenAI's builder needs one
        from tests.models import train_tokenizer

        train_tokenizer(SHAPES[shape]["vocab_size"]).save_pretrained(folder)
    return folder


# Runs the command, kills it past the cap, prints its peak RSS: a fresh process per measurement, so
# RUSAGE_CHILDREN covers that command alone.
_WRAPPER = """
import json, resource, subprocess, sys, threading, time
cap, command = int(sys.argv[1]), sys.argv[2:]
child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
killed = threading.Event()
def rss():
    try:
        return next(int(l.split()[1]) * 1024 for l in open(f"/proc/{child.pid}/status") if l.startswith("VmRSS:"))
    except (FileNotFoundError, StopIteration, ProcessLookupError):
        return 0
def watch():
    while child.poll() is None:
        if rss() > cap:
            killed.set()
            child.kill()
        time.sleep(0.1)
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
stdout, _ = child.communicate()
watcher.join()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"peak": peak, "returncode": child.returncode, "killed": killed.is_set(), "stdout": stdout}))
"""


def run_capped(command: list[str], cap_bytes: int, env: dict | None = None) -> dict:
    """Run ``command``; kill it if its RSS passes ``cap_bytes``. Returns its peak RSS, seconds, stdout."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WRAPPER, str(cap_bytes), *command], stdout=subprocess.PIPE,
                          text=True, env=env, check=True)
    return {**json.loads(done.stdout), "seconds": time.perf_counter() - started}


def measure_export(source: Path, out: Path, dtype: str = "float32", cap_gb: float = 9.0) -> dict:
    """Export ``source`` in a child process; peak RSS, baseline RSS, weights bytes and seconds."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = run_capped([sys.executable, "-c", _CHILD, str(source), str(out), dtype], int(cap_gb * 2**30), env)
    if result["killed"] or result["returncode"]:
        raise RuntimeError(f"export {'passed the memory cap' if result['killed'] else 'failed'} "
                           f"(peak {result['peak'] / 2**30:.2f} GiB)")
    baseline = json.loads(result["stdout"].splitlines()[0])["baseline"]
    weights = (out / "model.onnx.data").stat().st_size
    return {"peak": result["peak"], "baseline": baseline, "weights": weights, "seconds": result["seconds"],
            "ratio": (result["peak"] - baseline) / weights, "ratio_total": result["peak"] / weights}


def measure_genai(source: Path, out: Path, python: str, precision: str = "fp32", cap_gb: float = 9.0) -> dict:
    """onnxruntime-genai's model builder on the same folder (CPU), measured like ``measure_export``."""
    shutil.rmtree(out, ignore_errors=True)
    command = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(out) + ".hf-cache"]
    result = run_capped(command, int(cap_gb * 2**30))
    if result["killed"] or result["returncode"]:
        raise RuntimeError(f"the GenAI builder {'passed the memory cap' if result['killed'] else 'failed'}")
    return {"peak": result["peak"], "seconds": result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-150m")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--cap-gb", type=float, default=9.0)
    parser.add_argument("--genai", action="store_true", help="also run onnxruntime-genai's model builder")
    parser.add_argument("--genai-python", default=sys.executable, help="a Python that has onnxruntime-genai")
    args = parser.parse_args()
    source = llama_folder(args.shape)
    gib = 2**30
    ours = measure_export(source, CACHE / f"{source.name}-bundle-{args.dtype}", args.dtype, args.cap_gb)
    print(f"graphlens export ({args.shape}, {args.dtype}, with decoder): {ours['seconds']:.1f} s, peak RSS "
          f"{ours['peak'] / gib:.2f} GiB (after imports {ours['baseline'] / gib:.2f} GiB), weights "
          f"{ours['weights'] / gib:.2f} GiB: (peak - imports) / weights = {ours['ratio']:.2f}, "
          f"peak / weights = {ours['ratio_total']:.2f}")
    if args.genai:
        precision = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[args.dtype]
        theirs = measure_genai(source, CACHE / f"{source.name}-genai-{precision}", args.genai_python, precision,
                               args.cap_gb)
        print(f"onnxruntime-genai builder ({precision}): {theirs['seconds']:.1f} s, peak RSS "
              f"{theirs['peak'] / gib:.2f} GiB; graphlens / GenAI: time {ours['seconds'] / theirs['seconds']:.2f}x, "
              f"peak RSS {ours['peak'] / theirs['peak']:.2f}x")


if __name__ == "__main__":
    main()
