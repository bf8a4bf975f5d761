"""graphlens vs TransformerLens on CUDA: forward, run_with_cache (all hooks), greedy generation.

    python -m benchmarks.bench_gpu [--repeats 10] [--batch 4] [--pos 64] [--device cuda|cpu] [--no-genai]

Run by ``benchmarks/gpu.sh`` on a machine with an NVIDIA GPU and onnxruntime-gpu. gpt2-small shape,
random weights, fp32; graphlens on the CUDA execution provider, TransformerLens on torch CUDA; GenAI
CUDA (``onnxruntime-genai-cuda``) when installed, on a Llama of the same width. Prints ratios.
``--device cpu`` runs the same code on the CPU (``gpu.sh --dry-run``: the script works before a GPU is lent).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.common import bundle, hf_folder, log, median_ms, print_table, tl_model
from graphlens import HookedTransformer

PROMPT, NEW = 32, 64


def _cuda_ms(fn, repeats: int) -> float:
    """Median ms of ``fn``, synchronising torch's CUDA queue (ORT runs are synchronous)."""

    def run():
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return median_ms(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--no-genai", action="store_true", help="skip the GenAI comparison")
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and ("CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available()):
        raise SystemExit(f"needs onnxruntime-gpu with CUDA ({ort.get_available_providers()}) and torch with CUDA "
                         f"(torch.cuda.is_available() = {torch.cuda.is_available()})")

    source = hf_folder()
    tokens = np.random.default_rng(0).integers(0, 50000, size=(args.batch, args.pos))
    prompt = np.random.default_rng(1).integers(0, 50000, size=(1, PROMPT))
    log(f"graphlens on {device}")
    model = HookedTransformer.from_pretrained(bundle(source, name=f"{source.name}-bundle-decoder"), device=device)
    ours = {
        "forward": _cuda_ms(lambda: model(tokens), args.repeats),
        "run_with_cache": _cuda_ms(lambda: model.run_with_cache(tokens), args.repeats),
        "generate": _cuda_ms(lambda: model.generate(prompt, max_new_tokens=NEW, do_sample=False, stop_at_eos=False,
                                                    verbose=False), max(3, args.repeats // 3)),
    }
    ours_tokens = model.generate(prompt, max_new_tokens=NEW, do_sample=False, stop_at_eos=False, verbose=False)
    del model

    log(f"TransformerLens on {device}")
    tl = tl_model(source).to(device)
    tokens_t, prompt_t = torch.tensor(tokens, device=device), torch.tensor(prompt, device=device)
    theirs = {
        "forward": _cuda_ms(lambda: tl(tokens_t), args.repeats),
        "run_with_cache": _cuda_ms(lambda: tl.run_with_cache(tokens_t), args.repeats),
        "generate": _cuda_ms(lambda: tl.generate(prompt_t, max_new_tokens=NEW, do_sample=False, stop_at_eos=False,
                                                 verbose=False), max(2, args.repeats // 5)),
    }
    tl_tokens = tl.generate(prompt_t, max_new_tokens=NEW, do_sample=False, stop_at_eos=False, verbose=False).cpu().numpy()

    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    print(f"\ngpt2-small shape, random weights, fp32, {where}, forward / run_with_cache: "
          f"batch {args.batch} x {args.pos}; generate: batch 1, {PROMPT} + {NEW} tokens; median of {args.repeats}")
    for what in ours:
        print_table(what, [(f"graphlens {what}", ours[what]), (f"TransformerLens {what}", theirs[what])],
                    baseline=f"graphlens {what}")
    same = int((ours_tokens[0, PROMPT:] == tl_tokens[0, PROMPT:]).sum())
    print(f"\nTL / graphlens: forward {theirs['forward'] / ours['forward']:.2f}x, run_with_cache "
          f"{theirs['run_with_cache'] / ours['run_with_cache']:.2f}x, generate {theirs['generate'] / ours['generate']:.2f}x; "
          f"greedy tokens equal for {same} of {NEW}")
    if not args.no_genai:
        _genai_cuda(prompt)


def _genai_cuda(prompt: np.ndarray) -> None:
    """GenAI CUDA tokens/s on a Llama of gpt2-small's width, when onnxruntime-genai-cuda is installed."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        print("GenAI CUDA: onnxruntime-genai-cuda is not installed (skipped)")
        return
    import subprocess
    import sys

    from benchmarks.common import CACHE
    from benchmarks.export_memory import llama_folder

    source = llama_folder("llama-150m")
    out = CACHE / f"{source.name}-genai-cuda-fp32"
    if not (out / "genai_config.json").is_file():
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out),
                        "-p", "fp32", "-e", "cuda", "-c", str(out) + ".hf-cache"], check=True)
    genai = og.Model(str(out))
    ours = HookedTransformer.from_pretrained(bundle(source, name=f"{source.name}-bundle"), device="cuda")
    ids = prompt % 32000

    def genai_generate():
        params = og.GeneratorParams(genai)
        params.set_search_options(max_length=PROMPT + NEW, do_sample=False)
        generator = og.Generator(genai, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()

    t_genai = median_ms(genai_generate, 5)
    t_ours = median_ms(lambda: ours.generate(ids, max_new_tokens=NEW, do_sample=False, stop_at_eos=False,
                                             verbose=False), 5)
    print(f"Llama 12 x 768, batch 1, {PROMPT} + {NEW} tokens on CUDA: graphlens {NEW / t_ours * 1000:.1f} tok/s, "
          f"GenAI {NEW / t_genai * 1000:.1f} tok/s ({t_genai / t_ours:.2f}x)")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    log(f"bench_gpu took {time.perf_counter() - start:.0f} s")
