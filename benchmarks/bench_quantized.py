"""Greedy decode speed of an int4 bundle against ONNX Runtime GenAI's int4 model of the same HF folder.

    python -m benchmarks.bench_quantized [--shape llama125m|tiny] [--repeats 3] [--hook blocks.6.hook_resid_post]

A random Llama (default 12 × 768, GQA 12/4, MLP 2048, vocab 32000) saved locally; graphlens exports it
without weight processing (so its int4 blocks are the same matrices GenAI quantizes) and quantizes it
(`graphlens.quantize`, MatMulNBits int4, block 32, symmetric, accuracy level 4); GenAI's builder makes its
model from the same folder (`python -m onnxruntime_genai.models.builder -i DIR -o OUT -p int4 -e cpu`).
Batch 1, a 32-token prompt and 64 new tokens (EOS ignored), runs interleaved, medians.
``--threads N`` gives both runtimes N intra-op threads (on a machine shared with other jobs one thread
each suffers less from the cores being taken). Targets (issue 18): graphlens int4 ≥ 0.9× GenAI int4 with no hook read; reading one residual hook
per step (``generate(return_cache=True, names_filter=HOOK)``) costs ≤ 1.2× the run without.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks.bench_generate import interleaved_seconds
from benchmarks.common import CACHE, log

PROMPT, NEW = 32, 64
SHAPES = {
    "llama125m": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, num_key_value_heads=4,
                      intermediate_size=2048, vocab_size=32000, max_position_embeddings=256),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=96, vocab_size=300, max_position_embeddings=128),
}


def hf_llama(shape: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.models import train_tokenizer

    folder = CACHE / f"rms-{shape}-random"  # no "llama" in the name: TransformerLens picks configs by name
    if not (folder / "config.json").is_file():
        log(f"building the random {shape} model")
        torch.manual_seed(0)
        tokenizer = train_tokenizer(300)
        config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        LlamaForCausalLM(config).eval().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def graphlens_int4(folder):
    from graphlens.bundle import is_bundle
    from graphlens.export.pipeline import export_bundle
    from graphlens.quantize import quantize_bundle
    from graphlens.rewrite.weights import NO_PROCESSING

    float_bundle, out = CACHE / f"{folder.name}-bundle-raw", CACHE / f"{folder.name}-bundle-int4"
    if not is_bundle(out):
        if not is_bundle(float_bundle):
            log("exporting with graphlens (no processing)")
            export_bundle(str(folder), float_bundle, processing=NO_PROCESSING)
        log("quantizing with graphlens (int4)")
        quantize_bundle(float_bundle, out, "int4")
    return out


def genai_int4(folder):
    out = CACHE / f"{folder.name}-genai-int4"
    if not (out / "genai_config.json").is_file():
        log("building GenAI's int4 model")
        done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o",
                               str(out), "-p", "int4", "-e", "cpu", "-c", str(CACHE / "genai-build-cache")],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"GenAI's model builder failed:\n{done.stderr[-3000:]}")
    return out


def with_threads(genai_folder, threads: int):
    """GenAI's model folder with its decoder session's intra-op threads set (0: its default)."""
    path = genai_folder / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    if threads:
        options["intra_op_num_threads"] = threads
    else:
        options.pop("intra_op_num_threads", None)
    path.write_text(json.dumps(config, indent=4))
    return genai_folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama125m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hook", default="blocks.6.hook_resid_post", help="the residual hook read per step")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads for both runtimes (0: ONNX Runtime's default, one per core)")
    args = parser.parse_args()
    if args.threads:
        os.environ["GRAPHLENS_ORT_THREADS"] = str(args.threads)

    import onnxruntime_genai as og

    from graphlens import HookedTransformer

    folder = hf_llama(args.shape)
    model = HookedTransformer.from_pretrained_no_processing(graphlens_int4(folder))
    hook = args.hook if args.hook in model.hook_names else f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    genai = og.Model(str(with_threads(genai_int4(folder), args.threads)))
    vocab = model.cfg.d_vocab
    tokens = np.random.default_rng(0).integers(1, min(vocab, 300), size=(1, PROMPT))
    outputs: dict[str, np.ndarray] = {}

    def ours():
        outputs["graphlens"] = model.generate(tokens, max_new_tokens=NEW, do_sample=False, stop_at_eos=False,
                                              verbose=False)

    def ours_with_hook():
        out, cache = model.generate(tokens, max_new_tokens=NEW, do_sample=False, stop_at_eos=False, verbose=False,
                                    return_cache=True, names_filter=hook)
        assert cache[hook].shape[1] >= PROMPT + NEW - 1, cache[hook].shape  # every step's residual came back
        outputs["graphlens+hook"] = out

    def theirs():
        params = og.GeneratorParams(genai)
        params.set_search_options(max_length=PROMPT + NEW, min_length=PROMPT + NEW, do_sample=False, batch_size=1)
        generator = og.Generator(genai, params)
        generator.append_tokens(tokens.astype(np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        outputs["GenAI"] = np.asarray(generator.get_sequence(0))[None]

    log("graphlens int4, graphlens int4 + a hook per step, GenAI int4, in turns")
    t = interleaved_seconds({"graphlens": ours, "graphlens+hook": ours_with_hook, "GenAI": theirs},
                            {"graphlens": args.repeats, "graphlens+hook": args.repeats, "GenAI": args.repeats})
    same = outputs["graphlens"][0, PROMPT:] == outputs["GenAI"][0, PROMPT:PROMPT + NEW]
    first = NEW if same.all() else int(np.argmin(same))
    rate = lambda s: NEW / s
    print(f"\nGreedy decode, random Llama ({args.shape}: {SHAPES[args.shape]}), int4, CPU, batch 1, "
          f"{PROMPT}-token prompt + {NEW} new tokens, median of {args.repeats}, "
          f"intra-op threads {args.threads or 'default'}")
    print(f"{'':<34} {'tok/s':>8} {'ratio':>8}")
    print(f"{'GenAI int4':<34} {rate(t['GenAI']):8.1f} {1.0:8.2f}")
    print(f"{'graphlens int4 (no hook read)':<34} {rate(t['graphlens']):8.1f} {t['GenAI'] / t['graphlens']:8.2f}  "
          f"(vs GenAI; target >= 0.9)")
    print(f"{'graphlens int4 + ' + hook:<34} {rate(t['graphlens+hook']):8.1f} "
          f"{t['graphlens+hook'] / t['graphlens']:8.2f}  (cost vs no hook; target <= 1.2)")
    print(f"greedy tokens equal to GenAI's: {int(same.sum())} of {NEW} (first difference at step {first})")


if __name__ == "__main__":
    main()
