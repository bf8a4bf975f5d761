"""``graphlens generate``: continue a prompt with a bundle's model, streaming tokens as they come."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle")
@click.argument("prompt")
@click.option("-n", "--max-new-tokens", type=int, default=20, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--min-p", type=float, default=None)
@click.option("--freq-penalty", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Makes sampling reproducible.")
@click.option("--greedy", is_flag=True, help="Take the most likely token each step (no sampling).")
@click.option("--stop-at-eos/--no-stop-at-eos", default=True, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
def generate(bundle, prompt, max_new_tokens, temperature, top_k, top_p, min_p, freq_penalty, seed, greedy, stop_at_eos,
             device):
    """Continue PROMPT with the model in BUNDLE (a bundle folder or a model name), printing tokens as they come."""
    from graphlens.cli._common import load_model, prompt_tokens

    ctx = click.get_current_context()
    sampling = [f"--{name.replace('_', '-')}" for name in ("temperature", "top_k", "top_p", "min_p", "freq_penalty", "seed")
                if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if greedy and sampling:
        raise click.UsageError(f"--greedy takes the most likely token; it cannot be combined with {', '.join(sampling)}")
    model = load_model(bundle, device)
    tokens = prompt_tokens(model, prompt)
    decode = lambda ids: model.tokenizer.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
    generated: list[int] = []
    printed: list[str] = []  # empty until the first token: an error before it prints nothing but itself

    def stream(new, final: bool = False) -> None:
        if not printed:
            click.echo(decode(tokens[0]), nl=False)
            printed.append("")
        # decode the whole continuation: a character may span several byte-level tokens, so an incomplete
        # one (U+FFFD at the end) waits for the next token
        if new is not None:
            generated.append(int(new[0]))
        text = decode(generated)
        stable = text if final else text.rstrip("\ufffd")
        if stable.startswith(printed[0]):
            click.echo(stable[len(printed[0]):], nl=False)
            printed[0] = stable

    model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=temperature,
                   top_k=top_k, top_p=top_p, min_p=min_p, freq_penalty=freq_penalty, seed=seed,
                   stop_at_eos=stop_at_eos, verbose=False, on_token=stream)
    stream(None, final=True)
    click.echo()
