"""Train ``pydoc-gpt2``: a tiny GPT-2 that has induction heads, built from offline data only.

Run from the repository root (about 15 minutes on one CPU core):

    python models/shipped/pydoc-gpt2/train.py            # writes into this folder
    python models/shipped/pydoc-gpt2/train.py --out DIR  # writes elsewhere

Nothing is downloaded. The steps:

1. Corpus. Every Python install carries its own documentation as text:
   ``pydoc_data.topics.topics`` (the long help texts behind ``help('if')`` etc.) and
   the docstrings of the standard-library sources. The docstrings are read with
   ``ast`` from the ``.py`` files (no module is imported, so there are no side
   effects); test packages are skipped. Each pydoc topic and each module (all of its
   docstrings joined) is one document. Documents are split into train / held-out by
   a CRC32 of their name (1 in 20 held out), so the split is stable across runs.
   The exact text depends on the Python version, which is recorded in metrics.json.

2. Tokenizer. A byte-level BPE (``tokenizers``) trained on the train documents,
   with one special token ``<|endoftext|>`` (id 0) that serves as bos, eos and unk,
   like GPT-2's. It does not add bos by itself; callers prepend it.

3. Model. A plain ``GPT2LMHeadModel`` (see CONFIG below). Every step trains on
   - 4 text windows: ``[bos] + 255 tokens`` cut at a random place of the train stream
     (documents joined with ``<|endoftext|>``), every token a target, from the first step
     (text gives layer 0 a reason of its own to look at the previous token);
   - 32 synthetic rows ``[bos, R, R]`` padded to 128 tokens, R a span of 8..60 tokens
     uniform over the vocabulary (special token excluded), a new length per row so that
     no fixed offset can copy. The second copy is the target; the first copy cannot be
     predicted, and as a target it slows the induction circuit's formation, so it only
     joins the loss after phase 1 (then the model learns to hedge on novel tokens).
   Phase 1 (default steps 0-1200): heads 1-3 of the last layer are silenced (their
   outputs zeroed where they enter ``attn.c_proj``), so the induction circuit forms in
   one head. Without this, all four layer-1 heads became induction heads, and ablating
   any one of them barely moved the loss. Phase 2: every head trains.
   AdamW (lr 1e-3 after 100 warmup steps, weight decay 0.01), gradient clipping at 1.0.
   Training is seeded (``--seed``), runs a fixed number of steps, and takes about 15
   minutes on one CPU thread.

4. Measurements, written to metrics.json (and described in README.md):
   - ``heldout_text_loss``: mean next-token cross entropy, nats/token, on
     non-overlapping ``[bos] + 255``-token windows of the held-out documents,
     compared with ``log(vocab_size)`` (a uniform guess).
   - Induction score. Tokens ``[bos, r_1..r_n, r_1..r_n]`` with n = 50 and r_i
     uniform over the non-special vocabulary (64 such sequences, fixed seed). Position
     of r_i is i in the first copy and n+i in the second. A head's induction score is
     its attention probability from query n+i to key i+1 (the token that followed
     r_i's earlier occurrence), averaged over i = 1..n and over the sequences. This is
     TransformerLens' usual stripe: offset 1-n below the diagonal, queries n+1..2n.
     The previous-token score is the mean attention from q to q-1, q = 1..2n.
   - Repeat losses: mean cross entropy of the tokens r_2..r_n of the first copy
     (unpredictable, ~log V) and of the second copy (predictable by copying), with
     the model intact and with the best induction head zero-ablated: its slice of the
     concatenated head outputs (the ``z`` of that head, i.e. columns
     ``head*d_head:(head+1)*d_head`` of the input of ``attn.c_proj``) set to zero.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
import zlib
from pathlib import Path

import numpy as np
import torch

EOT = "<|endoftext|>"
TEXT_LEN = 256  # tokens per text window, bos included (= n_positions)
REPEAT_ROW_LEN = 128  # synthetic rows: [bos, R, R] padded to this length
SPAN_LEN = (8, 60)  # len(R), uniform in this range (inclusive), so no fixed offset can copy
CONFIG = dict(
    vocab_size=2048,
    n_positions=256,
    n_embd=128,
    n_layer=2,
    n_head=4,
    activation_function="gelu_new",
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    tie_word_embeddings=True,
)
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
INDUCTION_N = 50  # span length of the repeated-random-token probe
INDUCTION_BATCH = 64
EVAL_SEED = 20240601  # probe sequences do not depend on --seed


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- corpus
def stdlib_docstring_documents() -> list[tuple[str, str]]:
    """One document per stdlib module: its module/class/function docstrings joined."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for fname in sorted(filenames):
            if not fname.endswith(".py"):
                continue
            path = Path(dirpath) / fname
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            parts = []
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc and len(doc) >= 20:
                        parts.append(doc.strip())
            if parts:
                docs.append(("stdlib:" + path.relative_to(root).as_posix(), "\n\n".join(parts)))
    return docs


def pydoc_topic_documents() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [("pydoc:" + key, topics[key].strip()) for key in sorted(topics)]


def build_corpus() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    docs = pydoc_topic_documents() + stdlib_docstring_documents()
    train, heldout = [], []
    for name, text in docs:
        (heldout if zlib.crc32(name.encode()) % 20 == 0 else train).append((name, text))
    return train, heldout


# ------------------------------------------------------------------------ tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id(EOT) == 0
    return tok


def encode_stream(tok, texts: list[str]) -> np.ndarray:
    """Documents joined as ``<eot> doc <eot> doc ...`` into one id array."""
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.append(0)
        ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int64)


# --------------------------------------------------------------------------- batches
class BatchMaker:
    """Text windows and synthetic repeats (see the module docstring), from one seeded generator."""

    def __init__(self, stream: np.ndarray, vocab_size: int, rng: np.random.Generator):
        self.stream, self.vocab, self.rng = stream, vocab_size, rng

    def text_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[bos] + 255`` tokens cut at random places of the train stream; every token is a target."""
        starts = self.rng.integers(0, len(self.stream) - TEXT_LEN, size)
        x = np.stack([np.concatenate([[0], self.stream[s:s + TEXT_LEN - 1]]) for s in starts])
        return torch.from_numpy(x), torch.from_numpy(x.copy())

    def repeat_batch(self, rows: int, first_copy_in_loss: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[bos, R, R, <pad>...]``, R uniform random tokens; targets: the copies (-100 elsewhere)."""
        x = np.zeros((rows, REPEAT_ROW_LEN), dtype=np.int64)
        y = np.full_like(x, -100)
        for row in range(rows):
            n = int(self.rng.integers(SPAN_LEN[0], SPAN_LEN[1] + 1))
            span = self.rng.integers(1, self.vocab, n)
            x[row, 1:1 + n] = x[row, 1 + n:1 + 2 * n] = span
            y[row, 1 + n:1 + 2 * n] = span
            if first_copy_in_loss:
                y[row, 1:1 + n] = span
        return torch.from_numpy(x), torch.from_numpy(y)


def lm_loss_sum(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token CE over labelled positions; the LM head runs only where needed."""
    x, y = x.to(model.device), y.to(model.device)
    hidden = model.transformer(input_ids=x).last_hidden_state[:, :-1]
    target = y[:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum"), int(keep.sum())


# ----------------------------------------------------------------------- measurement
def repeated_random_tokens(vocab_size: int, n: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(1, vocab_size, (batch, n), generator=g)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), r, r], dim=1)


@torch.no_grad()
def attention_scores(model, tokens: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(induction, previous-token) scores, each [n_layer, n_head]."""
    tokens = tokens.to(model.device)
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=tokens, output_attentions=True)
    finally:
        model.set_attn_implementation(impl)
    att = torch.stack(out.attentions, dim=1)  # [batch, layer, head, q, k]
    q = torch.arange(n + 1, 2 * n + 1, device=att.device)
    induction = att[..., q, q - n + 1].mean(dim=(0, -1))
    q = torch.arange(1, 2 * n + 1, device=att.device)
    prev = att[..., q, q - 1].mean(dim=(0, -1))
    return induction, prev


class HeadAblation:
    """Zero the given heads' outputs (their z) where they enter attn.c_proj."""

    def __init__(self, model, heads: list[tuple[int, int]]):
        self.model, self.heads, self.handles = model, heads, []

    def __enter__(self):
        d_head = self.model.config.n_embd // self.model.config.n_head
        by_layer: dict[int, list[int]] = {}
        for layer, head in self.heads:
            by_layer.setdefault(layer, []).append(head)
        for layer, heads in by_layer.items():

            def hook(module, args, heads=heads):
                z = args[0].clone()
                for h in heads:
                    z[..., h * d_head : (h + 1) * d_head] = 0
                return (z,) + tuple(args[1:])

            proj = self.model.transformer.h[layer].attn.c_proj
            self.handles.append(proj.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def repeat_losses(model, tokens: torch.Tensor, n: int) -> tuple[float, float]:
    """Mean CE of r_2..r_n in the first copy and in the second copy."""
    tokens = tokens.to(model.device)
    logits = model(input_ids=tokens).logits.float()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none"
    )  # ce[:, p-1] is the loss of the token at position p
    first = ce[:, 1:n].mean().item()  # positions 2..n
    second = ce[:, n + 1 : 2 * n].mean().item()  # positions n+2..2n
    return first, second


@torch.no_grad()
def text_loss(model, windows: torch.Tensor, batch: int = 16) -> float:
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        x = windows[i : i + batch].to(model.device)
        logits = model(input_ids=x).logits.float()
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += ce.item()
        count += x[:, 1:].numel()
    return total / count


def fixed_windows(stream: np.ndarray, max_windows: int) -> torch.Tensor:
    body = TEXT_LEN - 1
    n = min(max_windows, len(stream) // body)
    rows = [[0] + stream[i * body : (i + 1) * body].tolist() for i in range(n)]
    return torch.tensor(rows)


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--phase1", type=int, default=1200,
                    help="steps during which only head 0 of the last layer writes its output (0: none)")
    ap.add_argument("--repeat-rows", type=int, default=32, help="synthetic [bos, R, R] rows per step")
    ap.add_argument("--text-batch", type=int, default=4, help="text windows per step")
    ap.add_argument("--first-copy-from", type=int, default=None,
                    help="step from which the (unpredictable) first copy of R is a target too "
                         "(default: the end of phase 1; -1: never)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 copes best with a shared CPU)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=125)
    args = ap.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    train_docs, heldout_docs = build_corpus()
    n_chars = sum(len(t) for _, t in train_docs)
    log(f"corpus: {len(train_docs)} train docs ({n_chars/1e6:.2f}M chars), {len(heldout_docs)} held-out docs")

    vocab = CONFIG["vocab_size"]
    tok = train_tokenizer([t for _, t in train_docs], vocab)
    train_stream = encode_stream(tok, [t for _, t in train_docs])
    heldout_stream = encode_stream(tok, [t for _, t in heldout_docs])
    log(f"tokenizer: vocab {tok.get_vocab_size()}; {len(train_stream)} train / {len(heldout_stream)} held-out tokens")

    config = GPT2Config(**CONFIG, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {CONFIG['n_layer']} layers, d_model {CONFIG['n_embd']}, {CONFIG['n_head']} heads, {n_params} parameters")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        """Linear warmup, then constant."""
        return args.lr * min(1.0, (step + 1) / args.warmup)

    # phase 1: only head 0 of the last layer may write to the residual stream (see the docstring)
    silenced = [(CONFIG["n_layer"] - 1, h) for h in range(1, CONFIG["n_head"])]

    maker = BatchMaker(train_stream, vocab, np.random.default_rng(args.seed))
    probe = repeated_random_tokens(vocab, INDUCTION_N, INDUCTION_BATCH, EVAL_SEED)
    heldout_windows = fixed_windows(heldout_stream, 128)
    short_probe = repeated_random_tokens(vocab, 12, 32, EVAL_SEED + 1)  # progress log only

    def report(step: int) -> None:
        model.eval()
        ind, prev = attention_scores(model, probe[:16], INDUCTION_N)
        first, second = repeat_losses(model, probe[:16], INDUCTION_N)
        short_ind, _ = attention_scores(model, short_probe, 12)
        held = text_loss(model, heldout_windows[:32])
        l, h = divmod(int(ind.argmax()), ind.shape[1])
        log(
            f"  eval step {step}: held-out text loss {held:.3f}, repeat loss 1st/2nd half "
            f"{first:.2f}/{second:.2f}, best induction head L{l}H{h} {ind.max():.3f}, "
            f"best previous-token head {prev.max():.3f}; n=12 probe: induction {short_ind.max():.3f}"
        )
        model.train()

    model.train()
    t_train = time.time()
    running = None
    first_copy_from = args.phase1 if args.first_copy_from is None else args.first_copy_from
    phase1 = contextlib.ExitStack()
    if args.phase1 > 0:
        phase1.enter_context(HeadAblation(model, silenced))
    for step in range(args.steps):
        if step == args.phase1 and args.phase1 > 0:
            phase1.close()
            log(f"phase 2 from step {step}: every head trains")
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss_sum, n_tok = lm_loss_sum(model, *maker.repeat_batch(args.repeat_rows, 0 <= first_copy_from <= step))
        text_sum, text_n = lm_loss_sum(model, *maker.text_batch(args.text_batch))
        loss = (loss_sum + text_sum) / (n_tok + text_n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % args.log_every == 0:
            el = time.time() - t_train
            log(f"step {step+1}/{args.steps}  loss {running:.3f}  lr {lr_at(step):.2e}  {el:.0f}s")
        if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            report(step + 1)
    train_seconds = time.time() - t_train
    log(f"training done in {train_seconds:.0f}s")

    # ------------------------------------------------------------------ measure
    model.eval()
    held = text_loss(model, heldout_windows)
    train_loss = text_loss(model, fixed_windows(train_stream, len(heldout_windows)))
    ind, prev = attention_scores(model, probe, INDUCTION_N)
    best_layer, best_head = divmod(int(ind.argmax()), ind.shape[1])
    first, second = repeat_losses(model, probe, INDUCTION_N)
    with HeadAblation(model, [(best_layer, best_head)]):
        first_abl, second_abl = repeat_losses(model, probe, INDUCTION_N)
    strong = [(l, h) for l in range(ind.shape[0]) for h in range(ind.shape[1]) if ind[l, h] >= 0.3]
    with HeadAblation(model, strong):
        first_abl_all, second_abl_all = repeat_losses(model, probe, INDUCTION_N)

    metrics = {
        "model": "pydoc-gpt2",
        "config": {**CONFIG, "n_params": n_params},
        "training": {
            "command": "python models/shipped/pydoc-gpt2/train.py",
            "seed": args.seed,
            "steps": args.steps,
            "text_windows_per_step": args.text_batch,
            "text_window_len": TEXT_LEN,
            "repeat_rows_per_step": args.repeat_rows,
            "repeat_row": f"[bos, R, R] padded to {REPEAT_ROW_LEN}, len(R) uniform in {SPAN_LEN[0]}..{SPAN_LEN[1]}",
            "first_copy_in_loss_from_step": first_copy_from,
            "phases": {
                "1": f"steps 0-{args.phase1}: heads {silenced} silenced (output zeroed)",
                "2": f"steps {args.phase1}-{args.steps}: every head trains",
            },
            "tokens_seen_approx": args.steps * (args.repeat_rows * REPEAT_ROW_LEN + args.text_batch * TEXT_LEN),
            "weight_decay": args.weight_decay,
            "peak_lr": args.lr,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "threads": args.threads,
            "device": args.device,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "data": {
            "train_documents": len(train_docs),
            "heldout_documents": len(heldout_docs),
            "train_tokens": int(len(train_stream)),
            "heldout_tokens": int(len(heldout_stream)),
        },
        "text": {
            "heldout_text_loss": round(held, 4),
            "train_text_loss": round(train_loss, 4),
            "uniform_loss_log_vocab": round(math.log(vocab), 4),
            "heldout_windows": len(heldout_windows),
        },
        "induction": {
            "probe": f"[bos, r_1..r_{INDUCTION_N}, r_1..r_{INDUCTION_N}], r uniform over ids 1..{vocab-1}, "
            f"{INDUCTION_BATCH} sequences, torch seed {EVAL_SEED}",
            "score_definition": "mean attention prob from query n+i to key i+1, i=1..n",
            "best_head": {"layer": best_layer, "head": best_head, "score": round(float(ind.max()), 4)},
            "induction_scores": [[round(float(v), 4) for v in row] for row in ind],
            "previous_token_scores": [[round(float(v), 4) for v in row] for row in prev],
            "first_half_loss": round(first, 4),
            "second_half_loss": round(second, 4),
            "second_half_loss_best_head_ablated": round(second_abl, 4),
            "first_half_loss_best_head_ablated": round(first_abl, 4),
            "heads_scoring_at_least_0.3": [list(t) for t in strong],
            "second_half_loss_all_those_ablated": round(second_abl_all, 4),
        },
    }

    args.out.mkdir(parents=True, exist_ok=True)
    model.cpu().save_pretrained(args.out)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, model_max_length=CONFIG["n_positions"]
    )
    fast.save_pretrained(args.out)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(json.dumps({"text": metrics["text"], "induction": {k: v for k, v in metrics["induction"].items() if "scores" not in k}}, indent=2))
    log(f"saved to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
