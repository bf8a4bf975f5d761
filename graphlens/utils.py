"""TransformerLens' ``utils`` helpers that read a model: ``test_prompt`` (numpy)."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from graphlens.errors import InputError


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def test_prompt(
    prompt: str,
    answer: Union[str, Sequence[str]],
    model,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> None:
    """Print how ``model`` ranks ``answer`` after ``prompt``: TransformerLens' table (rank, logit, prob, top-k).

    A list of answers compares their first tokens as alternatives for the next token.
    """
    answers = [answer] if isinstance(answer, str) else list(answer)
    if not answers:
        raise InputError("test_prompt needs at least one answer")
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    multiple = len(answers) > 1
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    answer_tokens = model.to_tokens(answers, prepend_bos=False)
    if multiple:
        answer_tokens = answer_tokens[:, :1]
    tokens = np.concatenate([np.repeat(prompt_tokens, answer_tokens.shape[0], axis=0), answer_tokens], axis=1)
    prompt_str = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_strs = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    start, length = len(prompt_str), 1 if multiple else len(answer_strs[0])
    if print_details:
        print("Tokenized prompt:", prompt_str)
        print("Tokenized answers:" if multiple else "Tokenized answer:", answer_strs if multiple else answer_strs[0])
    logits = model(tokens)
    probs = _softmax(logits)
    ranks = []
    for index in range(start, start + length):
        wanted = tokens[:, index]
        strs = [a[index - start] for a in answer_strs]
        token_probs = probs[:, index - 1]
        order = np.argsort(-token_probs, axis=-1, kind="stable")
        position = np.argsort(order, axis=-1, kind="stable")[np.arange(len(answers)), wanted]
        ranks.append([(s, int(r)) for s, r in zip(strs, position)])
        if print_details:
            print(f"Performance on answer token{'s' if multiple else ''}:\n" + "\n".join(
                f"Rank: {int(position[i]): <8} Logit: {logits[i, index - 1, wanted[i]]:5.2f} "
                f"Prob: {token_probs[i, wanted[i]]:6.2%} Token: |{strs[i]}|" for i in range(len(answers))))
            for i in range(top_k):
                top = order[0, i]
                print(f"Top {i}th token. Logit: {logits[0, index - 1, top]:5.2f} Prob: {token_probs[0, top]:6.2%} "
                      f"Token: |{model.to_string(top)}|")
    print("Ranks of the answer tokens:", [r[0] for r in ranks] if not multiple else ranks)


test_prompt.__test__ = False  # not a pytest test despite its name
