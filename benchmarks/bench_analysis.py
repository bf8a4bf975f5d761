"""ActivationCache analysis methods and weight matrices on a gpt2-small-shaped model, CPU: graphlens vs TL 3.9.

    python -m benchmarks.bench_analysis [--repeats 5] [--batch 4] [--pos 64]

On a machine with fewer free cores than OpenBLAS threads (a shared box), numpy's batched SVD slows down
by an order of magnitude; set OPENBLAS_NUM_THREADS=1 there.

Both run on cached activations of the same tokens (numpy vs torch); weights are read from the ONNX
initializers (graphlens) or the module parameters (TransformerLens).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import bundle, hf_folder, log, median_ms, tl_model
from graphlens import HookedTransformer
from graphlens.analysis import logit_lens


def operations(model, cache, token, to_backend, lens):
    direction = to_backend(model.W_U[:, token])
    return {
        "logit lens, last position": lens,
        "decompose_resid(apply_ln)": lambda: cache.decompose_resid(apply_ln=True),
        "head DLA (stack_head_results + logit_attrs)": lambda: cache.logit_attrs(
            cache.stack_head_results(apply_ln=True, pos_slice=-1), to_backend(np.full(4, token)), pos_slice=-1),
        "get_full_resid_decomposition(expand_neurons=False)": lambda: cache.get_full_resid_decomposition(
            apply_ln=True, pos_slice=-1, expand_neurons=False),
        "stack_neuron_results projected (apply_ln)": lambda: cache.stack_neuron_results(
            -1, pos_slice=-1, apply_ln=True, project_output_onto=direction),
        "QK.S (SVD of every head, factored)": lambda: model.QK.S,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    args = parser.parse_args()
    source = hf_folder()
    tokens = np.random.default_rng(0).integers(0, 50257, size=(args.batch, args.pos))
    token = 1234

    log("graphlens")
    ours = HookedTransformer.from_pretrained(bundle(source), device="cpu")
    start = time.perf_counter()
    for name in "W_E W_pos W_U W_Q W_K W_V W_O W_in W_out b_Q b_K b_V b_O b_in b_out".split():
        getattr(ours, name)
    first_weights_ms = 1000 * (time.perf_counter() - start)
    _, cache = ours.run_with_cache(tokens)
    ours_lens = lambda: logit_lens(cache, pos_slice=-1)
    ours_ops = {k: median_ms(f, args.repeats) for k, f in operations(ours, cache, token, np.asarray, ours_lens).items()}
    del cache

    log("TransformerLens")
    ref = tl_model(source)
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor(tokens))
        ref_lens = lambda: ref_cache.accumulated_resid(apply_ln=True, pos_slice=-1) @ ref.W_U + ref.b_U
        ops = operations(ref, ref_cache, token, torch.as_tensor, ref_lens)
        ref_ops = {k: median_ms(f, args.repeats) for k, f in ops.items()}

    print(f"\nbatch {args.batch} x {args.pos} tokens, gpt2-small shape, CPU; median of {args.repeats} runs (ms)")
    print(f"{'':52s} {'TL 3.9':>9s} {'graphlens':>10s}")
    for name in ours_ops:
        print(f"{name:52s} {ref_ops[name]:9.1f} {ours_ops[name]:10.1f}")
    print(f"first read of every weight matrix from the ONNX initializers: {first_weights_ms:.0f} ms (then cached)")


if __name__ == "__main__":
    main()
