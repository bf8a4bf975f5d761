"""Property-based fuzz of the public API: whatever goes in, only graphlens errors come out.

``python -m tests.fuzz_driver BUNDLE [SCALE]`` runs each property below with hypothesis (SCALE
multiplies the example counts; the defaults keep the whole run near a minute on two cores) and exits
non-zero with the falsifying example when anything other than a ``GraphlensError`` escapes. It runs in
its own process (tests/test_fuzz.py) so that a crash of ONNX Runtime is seen as one, not lost.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from graphlens import HookedTransformer, intervene
from graphlens.errors import BundleWarning, GraphlensError

warnings.simplefilter("ignore", BundleWarning)


def expect_graphlens_errors(fn, *args, **kwargs):
    """Call ``fn``; a GraphlensError is a pass (bad input was refused), anything else escapes."""
    try:
        return fn(*args, **kwargs)
    except GraphlensError:
        return None


def run(bundle: Path, scale: float) -> None:
    model = HookedTransformer(bundle)
    cfg = model.cfg
    hooks = model.hook_names
    scratch = Path(tempfile.mkdtemp(prefix="graphlens-fuzz-"))

    def examples(n: int):
        return settings(max_examples=max(1, int(n * scale)), deadline=None, database=None, derandomize=True,
                        suppress_health_check=list(HealthCheck))

    dtypes = st.sampled_from([np.int64, np.int32, np.uint8, np.float32, np.float64, np.bool_, np.complex64])
    small_ints = st.integers(min_value=-3, max_value=cfg.d_vocab + 3)
    token_arrays = st.one_of(
        hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=cfg.n_ctx + 2)),
        st.lists(st.lists(small_ints, max_size=6), max_size=3),
        st.text(max_size=20),
        st.lists(st.text(max_size=8), max_size=3),
        st.none(),
    )

    @examples(200)
    @given(tokens=token_arrays)
    def tokens_anything(tokens):
        out = expect_graphlens_errors(model, tokens)
        if out is not None:
            assert out.shape[-1] == cfg.d_vocab_out

    names = st.one_of(st.sampled_from(hooks + ["logits"]), st.text(max_size=30),
                      st.sampled_from(hooks).map(lambda h: h[:-1]))
    suffixes = st.sampled_from(["patch", "patch_mask", "add", "patc", "", "add.add"])
    feed_values = st.one_of(
        hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=5, min_side=1, max_side=5)),
        st.lists(st.floats(allow_nan=True), max_size=4),
        st.text(max_size=4),
    )

    @examples(200)
    @given(outputs=st.one_of(st.lists(names, max_size=3), names, st.integers()),
           feeds=st.dictionaries(st.tuples(names, suffixes).map(lambda t: f"{t[0]}.{t[1]}"), feed_values, max_size=3))
    def run_graph_anything(outputs, feeds):
        tokens = np.array([[1, 2, 3]])
        out = expect_graphlens_errors(model.run_graph, tokens, outputs, feeds=feeds)
        if out is not None:
            assert all(v.shape[0] == 1 for v in out.values())

    @examples(100)
    @given(names_filter=st.one_of(st.none(), names, st.lists(names, max_size=3)),
           key=st.one_of(names, st.tuples(st.sampled_from(["resid_pre", "pattern", "scale", "q", "bogus"]),
                                          st.integers(-4, 4))))
    def names_anything(names_filter, key):
        result = expect_graphlens_errors(model.run_with_cache, np.array([[1, 2]]), names_filter=names_filter)
        if result is not None:
            expect_graphlens_errors(result[1].__getitem__, key)

    numbers = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text(max_size=2))

    @examples(100)
    @given(temperature=numbers, top_k=numbers, top_p=numbers, min_p=numbers, freq_penalty=numbers,
           max_new_tokens=st.one_of(st.integers(-2, 3), st.floats(0, 3)), seed=st.one_of(st.none(), st.integers(-2, 5)),
           do_sample=st.booleans())
    def generation_anything(temperature, top_k, top_p, min_p, freq_penalty, max_new_tokens, seed, do_sample):
        options = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, freq_penalty=freq_penalty)
        options = {k: v for k, v in options.items() if v is not None or k in ("top_k", "top_p", "min_p")}
        out = expect_graphlens_errors(model.generate, np.array([[1, 2]]), max_new_tokens=max_new_tokens, seed=seed,
                                      do_sample=do_sample, verbose=False, **options)
        if out is not None:
            assert out.shape[0] == 1 and 2 <= out.shape[1] <= 2 + max_new_tokens

    manifest = json.loads((bundle / "graphlens.json").read_text())
    json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=12)),
                               lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                               max_leaves=6)
    paths = st.sampled_from(["format_version", "model_file", "external_data_file", "tokenizer_files", "hooks", "config",
                             "config.n_layers", "config.d_model", "config.n_ctx", "decoder", "decoder.file",
                             "decoder.hook_names", "files", "files.model.onnx", "architecture", "dtype", "outputs"])

    @examples(80)
    @given(path=paths, value=st.one_of(json_values, st.sampled_from(["../x", "/etc/passwd", "model.onnx", ".."])),
           drop=st.booleans())
    def manifests_anything(path, value, drop):
        folder = scratch / "m"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(bundle, folder)
        edited = json.loads(json.dumps(manifest))
        *parents, leaf = path.split(".", 1) if path.startswith("files.") else path.split(".")
        target = edited
        for key in parents:
            target = target[key]
        if drop:
            target.pop(leaf, None)
        else:
            target[leaf] = value
        (folder / "graphlens.json").write_text(json.dumps(edited))
        loaded = expect_graphlens_errors(HookedTransformer.from_pretrained, folder)
        if loaded is not None:
            expect_graphlens_errors(loaded, np.array([[1, 2]]))
        expect_graphlens_errors(intervene, folder, [{"hook": hooks[1], "op": "zero"}], scratch / "out", overwrite=True)

    files = sorted(p.name for p in bundle.iterdir())

    @examples(60)
    @given(name=st.sampled_from(files), at=st.floats(0, 1), length=st.integers(0, 64),
           how=st.sampled_from(["flip", "truncate", "append", "delete", "garbage"]))
    def bundle_files_anything(name, at, length, how):
        folder = scratch / "f"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(bundle, folder)
        file = folder / name
        data = bytearray(file.read_bytes())
        start = int(at * max(len(data) - 1, 0))
        if how == "flip":
            data[start:start + length] = bytes(b ^ 0xA5 for b in data[start:start + length])
        elif how == "truncate":
            data = data[:start]
        elif how == "append":
            data += b"\0" * length
        elif how == "garbage":
            data = bytearray(b"\x08\x96\x01garbage" * (length + 1))
        if how == "delete":
            file.unlink()
        else:
            file.write_bytes(bytes(data))
        changed = how == "delete" or bytes(data) != (bundle / name).read_bytes()
        verified = expect_graphlens_errors(HookedTransformer.from_pretrained, folder, verify=True)
        if changed:
            assert verified is None, f"damage to {name} ({how}) was not detected"
        loaded = expect_graphlens_errors(HookedTransformer.from_pretrained, folder)
        if loaded is not None:
            expect_graphlens_errors(loaded.generate, np.array([[1, 2]]), max_new_tokens=2, verbose=False)

    properties = [tokens_anything, run_graph_anything, names_anything, generation_anything, manifests_anything,
                  bundle_files_anything]
    try:
        for prop in properties:
            prop()
            print(f"ok {prop.__name__}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    run(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
