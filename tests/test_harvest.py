"""``graphlens harvest`` and ``ActivationStore``: stored activations against TransformerLens 3.9 and
graphlens' ``run_with_cache`` on the stored tokens, SAELens' tokenization rule, every DATA format,
resume after an interruption or a full disk, and clear errors."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from graphlens import HookedTransformer
from graphlens.cli import main
from graphlens.errors import DataError, HarvestError, InputError
from graphlens.harvest import ActivationStore, harvest
from graphlens.harvest.windows import windows
from tests.models import TEXT, tl_reference
from tests.test_equivalence import assert_close

safetensors_numpy = pytest.importorskip("safetensors.numpy")

CTX = 12
DOCS = [t.strip().replace("\n", " ") for t in TEXT[:24]] + ["", "A short one.", "x " * 40]  # an empty and a long document too


@pytest.fixture(scope="module")
def model(small_bundle):
    return HookedTransformer.from_pretrained(small_bundle)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "docs.txt"
    path.write_text("\n".join(DOCS) + "\n")
    return path


@pytest.fixture(scope="module")
def reference_run(small_bundle, text_file, tmp_path_factory) -> Path:
    """An uninterrupted harvest of three hook kinds, 3 sequences per batch, 6 per shard."""
    out = tmp_path_factory.mktemp("ref") / "out"
    return harvest(small_bundle, text_file, ["resid_post", "blocks.0.attn.hook_pattern"], CTX, out,
                   batch_size=3, shard_size=6, progress=False)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def sae_lens_windows(docs_tokens: list[np.ndarray], bos: int) -> np.ndarray:
    """The rule, written out from README: BOS opens each window, BOS separates documents, rest dropped."""
    return np.stack(list(windows(docs_tokens, CTX, begin=bos, separator=bos)))


def test_every_hook_kind_equals_transformer_lens_on_the_stored_tokens(model, small_bundle, small_hf, text_file, tmp_path):
    out = harvest(small_bundle, text_file, ["hook_"], CTX, tmp_path / "all", batch_size=4, shard_size=8,
                  max_tokens=20 * CTX, progress=False)
    store = ActivationStore(out)
    assert list(store.hooks) == model.hook_names  # every hook, in TransformerLens' order
    assert store.n_sequences == 20 and store.n_tokens == 20 * CTX and len(store.shards) == 3
    ref = tl_reference(small_hf)
    for number in range(len(store.shards)):
        shard = store.shard(number)
        tokens = shard["tokens"]
        _, ours = model.run_with_cache(tokens)
        with torch.no_grad():
            _, theirs = ref.run_with_cache(torch.tensor(tokens))
        for name in model.hook_names:  # incl. attn.hook_pattern, attn.hook_attn_scores (-inf), ln scales, q/k/v
            assert shard[name].shape == ours[name].shape and shard[name].dtype == np.float32, name
            assert_close(shard[name], ours[name].astype(np.float32), name)
            assert_close(shard[name], theirs[name], name)


def test_tokens_follow_sae_lens_default_rule(model, reference_run, small_hf):
    ref = tl_reference(small_hf)  # SAELens tokenizes each document with TL's to_tokens(prepend_bos=False)
    docs = [ref.to_tokens(d, prepend_bos=False, truncate=False)[0].numpy() if d else np.zeros(0, np.int64) for d in DOCS]
    expected = sae_lens_windows(docs, ref.tokenizer.bos_token_id)
    stored = np.concatenate(list(ActivationStore(reference_run).tokens()))
    np.testing.assert_array_equal(stored, expected)
    assert (stored[:, 0] == ref.tokenizer.bos_token_id).all()


def test_window_rule_on_a_small_example():
    docs = [np.array([5, 6, 7]), np.array([8, 9]), np.array([10, 11, 12, 13, 14]), np.array([0, 20, 21, 22])]
    got = [w.tolist() for w in windows(docs, 4, begin=0, separator=0)]
    # a separator that does not fit ends the window; a document starting with BOS gets no extra one
    assert got == [[0, 5, 6, 7], [0, 8, 9, 0], [0, 10, 11, 12], [0, 13, 14, 0], [0, 20, 21, 22]]
    assert [w.tolist() for w in windows(docs, 4, begin=None, separator=None)] == [
        [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 0, 20]]


def test_window_rule_equals_sae_lens():
    """Only where SAELens is installed (a benchmark dependency): its own function on random documents."""
    sae_lens = pytest.importorskip("sae_lens.tokenization_and_batching")
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 50, size=rng.integers(0, 30)) for _ in range(200)]
    docs += [np.concatenate([[0], d]) for d in docs[:20]]  # documents that already start with BOS
    for begin, separator in ((0, 0), (None, 0), (0, None), (None, None), (0, 7)):
        theirs = [t.numpy() for t in sae_lens.concat_and_batch_sequences(
            iter(torch.tensor(d, dtype=torch.long) for d in docs), CTX, begin_batch_token_id=begin,
            sequence_separator_token_id=separator)]
        ours = list(windows(docs, CTX, begin=begin, separator=separator))
        assert len(ours) == len(theirs) and all((a == b).all() for a, b in zip(ours, theirs)), (begin, separator)


def test_index_records_shapes_options_and_statistics(reference_run, model):
    index = json.loads((reference_run / "index.json").read_text())
    store = ActivationStore(reference_run)
    assert index["complete"] and index["context_size"] == CTX and index["tokens_per_shard"] == 6 * CTX
    assert index["options"]["batch_size"] == 3 and index["options"]["prepend_bos"] is True
    assert index["hooks"]["blocks.0.attn.hook_pattern"]["shape"] == [model.cfg.n_heads, CTX, CTX]
    assert index["hooks"]["blocks.1.hook_resid_post"]["shape"] == [CTX, model.cfg.d_model]
    assert index["total_tokens"] == store.n_sequences * CTX == sum(s["tokens"] for s in index["shards"])
    assert [s["file"] for s in index["shards"]] == [p.name for p in store.shards]
    for name in index["hooks"]:
        rows = np.concatenate([store.layout(name).flat(store.shard(i, [name])[name]) for i in range(len(store.shards))])
        rows = rows.astype(np.float64)
        stats = store.stats(name)
        np.testing.assert_allclose(stats["mean"], rows.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(stats["variance"], rows.var(0), rtol=1e-9, atol=1e-12)
        assert stats["max_norm"] == pytest.approx(np.linalg.norm(rows, axis=1).max(), rel=1e-12)


def test_statistics_skip_masked_attention_scores(small_bundle, text_file, tmp_path):
    out = harvest(small_bundle, text_file, ["blocks.1.attn.hook_attn_scores"], CTX, tmp_path / "s", batch_size=4,
                  max_tokens=8 * CTX, progress=False)
    store = ActivationStore(out)
    rows = store.layout("blocks.1.attn.hook_attn_scores").flat(store.shard(0)["blocks.1.attn.hook_attn_scores"])
    rows = np.where(np.isfinite(rows), rows.astype(np.float64), np.nan)
    np.testing.assert_allclose(store.stats("blocks.1.attn.hook_attn_scores")["mean"], np.nanmean(rows, 0), rtol=1e-9)
    assert store.index["hooks"]["blocks.1.attn.hook_attn_scores"]["stats"]["count"][:2] == [8 * CTX, 8 * (CTX - 1)]  # key 1: queries 1..


def test_store_batches_ordered_shuffled_and_unflattened(reference_run, model):
    store = ActivationStore(reference_run)
    name = "blocks.0.attn.hook_pattern"
    shards = [store.shard(i) for i in range(len(store.shards))]
    tokens = np.concatenate([s["tokens"] for s in shards])
    _, cache = model.run_with_cache(tokens, names_filter=name)
    expected = cache[name].transpose(0, 2, 1, 3).reshape(-1, model.cfg.n_heads * CTX)  # [seq*query, head*key]
    ordered = list(store.batches(name, 50))
    assert [len(b) for b in ordered[:-1]] == [50] * (len(ordered) - 1)
    np.testing.assert_allclose(np.concatenate(ordered), expected, atol=1e-6)
    shuffled = np.concatenate(list(store.batches(name, 50, shuffle=True, seed=3, buffer_shards=2)))
    assert not np.array_equal(shuffled, expected)
    np.testing.assert_array_equal(np.unique(shuffled, axis=0), np.unique(np.concatenate(ordered), axis=0))
    again = np.concatenate(list(store.batches(name, 50, shuffle=True, seed=3, buffer_shards=2)))
    np.testing.assert_array_equal(shuffled, again)
    per_sequence = list(store.batches(name, 4, flatten=False, drop_last=True))
    assert all(b.shape == (4, model.cfg.n_heads, CTX, CTX) for b in per_sequence)
    np.testing.assert_allclose(np.concatenate(per_sequence), cache[name][: 4 * len(per_sequence)], atol=1e-6)


def test_every_data_format_gives_the_same_shards(small_bundle, text_file, reference_run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"body": d, "id": i} for i, d in enumerate(DOCS)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=5)
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "docs-dataset"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    dict_folder = tmp_path / "docs-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(dict_folder))
    npy = tmp_path / "tokens.npy"
    np.save(npy, np.concatenate(list(ActivationStore(reference_run).tokens())))
    shards = {k: v for k, v in files_of(reference_run).items() if k.startswith("shard-")}
    for data in (jsonl, parquet, folder, dict_folder, npy):
        out = harvest(small_bundle, data, ["resid_post", "blocks.0.attn.hook_pattern"], CTX, tmp_path / f"out-{data.name}",
                      batch_size=3, shard_size=6, column="body", progress=False)
        got = {k: v for k, v in files_of(out).items() if k.startswith("shard-")}
        assert got == shards, data.name


def test_float16_shards_hold_the_float32_values_rounded(small_bundle, text_file, reference_run, tmp_path):
    out = harvest(small_bundle, text_file, ["resid_post", "blocks.0.attn.hook_pattern"], CTX, tmp_path / "h",
                  batch_size=3, shard_size=6, dtype="float16", progress=False)
    half, full = ActivationStore(out), ActivationStore(reference_run)
    assert half.hooks["blocks.1.hook_resid_post"]["dtype"] == "float16"
    for number in range(len(full.shards)):
        ours, ref = half.shard(number), full.shard(number)
        for name in full.hooks:
            assert ours[name].dtype == np.float16
            np.testing.assert_array_equal(ours[name], ref[name].astype(np.float16), err_msg=name)


def test_one_dimensional_token_ids_are_one_document(small_bundle, model, tmp_path):
    ids = np.random.default_rng(0).integers(1, model.cfg.d_vocab, size=5 * (CTX - 1) + 3)
    np.save(tmp_path / "ids.npy", ids)
    out = harvest(small_bundle, tmp_path / "ids.npy", ["blocks.0.hook_resid_pre"], CTX, tmp_path / "o", batch_size=2,
                  progress=False)
    stored = np.concatenate(list(ActivationStore(out).tokens()))
    bos = model.tokenizer.bos_token_id
    expected = np.stack([np.concatenate([[bos], ids[i * (CTX - 1):(i + 1) * (CTX - 1)]]) for i in range(5)])
    np.testing.assert_array_equal(stored, expected)
    out = harvest(small_bundle, tmp_path / "ids.npy", ["blocks.0.hook_resid_pre"], CTX, tmp_path / "o2", batch_size=2,
                  prepend_bos=False, progress=False)
    np.testing.assert_array_equal(np.concatenate(list(ActivationStore(out).tokens())), ids[: 4 * CTX].reshape(4, CTX))


def test_cli_harvest_equals_the_python_api(small_bundle, text_file, reference_run, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["harvest", str(small_bundle), str(text_file), "--hooks", "resid_post",
                                       "--hooks", "blocks.0.attn.hook_pattern", "--context-size", str(CTX), "-o", str(out),
                                       "--batch-size", "3", "--shard-size", "6", "--quiet"])
    assert result.exit_code == 0, result.output
    assert files_of(out) == files_of(reference_run)
    assert "tokens" in result.output and "shards" in result.output


class _Interrupt:
    """Wraps safetensors' save_file: the ``at``-th shard is half-written, then ``error`` is raised."""

    def __init__(self, monkeypatch, at: int, error: BaseException):
        self.calls, self.at, self.error = 0, at, error
        self.real = safetensors_numpy.save_file
        monkeypatch.setattr(safetensors_numpy, "save_file", self)

    def __call__(self, tensors, filename, metadata=None):
        self.calls += 1
        if self.calls == self.at:
            Path(filename).write_bytes(b"half a shard")
            raise self.error
        return self.real(tensors, filename, metadata=metadata)


@pytest.mark.parametrize("error, expected", [
    (KeyboardInterrupt(), KeyboardInterrupt),
    (OSError(errno.ENOSPC, "No space left on device"), HarvestError),
], ids=["interrupted", "disk-full"])
def test_interrupted_run_resumes_to_the_same_files(small_bundle, text_file, reference_run, tmp_path, monkeypatch,
                                                    error, expected):
    out = tmp_path / "out"
    args = (small_bundle, text_file, ["resid_post", "blocks.0.attn.hook_pattern"], CTX, out)
    interrupt = _Interrupt(monkeypatch, at=3, error=error)
    with pytest.raises(expected) as raised:
        harvest(*args, batch_size=3, shard_size=6, progress=False)
    if expected is HarvestError:
        assert "disk full" in str(raised.value) and "--resume" in str(raised.value)
    # only complete shards (listed in the index), no temporary file
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    assert not json.loads((out / "index.json").read_text())["complete"]
    with pytest.raises(HarvestError, match="unfinished"):
        ActivationStore(out)
    with pytest.raises(HarvestError, match="--resume"):
        harvest(*args, batch_size=3, shard_size=6, progress=False)
    monkeypatch.setattr(safetensors_numpy, "save_file", interrupt.real)
    harvest(*args, resume=True, progress=False)  # batch and shard sizes come from the index
    assert files_of(out) == files_of(reference_run)
    with pytest.raises(HarvestError, match="different options"):
        harvest(*args, resume=True, max_tokens=10 * CTX, progress=False)


def test_bad_data_and_hooks_give_clear_errors(small_bundle, text_file, tmp_path):
    def fails(data, error, match, hooks=("resid_post",), **kwargs):
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        with pytest.raises(error, match=match):
            harvest(small_bundle, data, list(hooks), CTX, out, batch_size=2, progress=False, **kwargs)
        assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith(("shard-", "."))]

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": broken\n')
    fails(bad_json, DataError, r"bad.jsonl:2: not a JSON object")
    no_column = tmp_path / "other.jsonl"
    no_column.write_text('{"body": "text here"}\n')
    fails(no_column, DataError, r"no 'text' field .*--column")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    fails(binary, DataError, "not UTF-8")
    fails(tmp_path / "data.csv", DataError, "no such file")
    (tmp_path / "data.csv").write_text("a,b\n")
    fails(tmp_path / "data.csv", DataError, "unknown DATA format '.csv'")
    np.save(tmp_path / "floats.npy", np.ones(100))
    fails(tmp_path / "floats.npy", DataError, "integer array")
    np.save(tmp_path / "big.npy", np.array([1, 2, 10**6] * 20))
    fails(tmp_path / "big.npy", DataError, r"out of the model's range \[0, 300\): \[1000000\]")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    fails(tmp_path / "broken.parquet", DataError, "not a readable Parquet file")
    (tmp_path / "tiny.txt").write_text("hi\n")
    fails(tmp_path / "tiny.txt", HarvestError, "no complete sequence")
    fails(text_file, InputError, "no hook name matches 'resid_postt'", hooks=("resid_postt",))
    with pytest.raises(InputError, match="--workers sets the number of Ray actors"):
        harvest(small_bundle, text_file, ["resid_post"], CTX, tmp_path / "w", workers=2, progress=False)
    with pytest.raises(InputError, match="--context-size must be in 1..32"):
        harvest(small_bundle, text_file, ["resid_post"], 64, tmp_path / "ctx", progress=False)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(HarvestError, match="not empty"):
        harvest(small_bundle, text_file, ["resid_post"], CTX, taken, progress=False)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_cli_errors_are_one_line(small_bundle, text_file, tmp_path):
    result = CliRunner().invoke(main, ["harvest", str(small_bundle), str(text_file), "--hooks", "nope",
                                       "--context-size", "8", "-o", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no hook name matches 'nope'"), result.output


def test_ray_auto_gives_the_same_files_as_a_local_run(small_bundle, text_file, reference_run, tmp_path):
    """A local Ray instance (started and stopped by the run, in a child process bounded in time) with 2 actors."""
    pytest.importorskip("ray.data")
    import os
    import subprocess
    import sys

    out = tmp_path / "ray"
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", "from graphlens.cli import main; main()", "harvest", str(small_bundle),
               str(text_file), "--hooks", "resid_post,blocks.0.attn.hook_pattern", "--context-size", str(CTX),
               "-o", str(out), "--batch-size", "3", "--shard-size", "6", "--ray", "auto", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_DEDUP_LOGS": "0"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert files_of(out) == files_of(reference_run)  # same shards, same order, same bytes; same index


def test_memory_budget_bounds_shards_and_batches(small_bundle, text_file, tmp_path):
    """A quarter of the budget per shard (the files on disk say so), a whole number of batches per shard."""
    budget_mb = 0.5
    out = harvest(small_bundle, text_file, ["resid_post"], CTX, tmp_path / "b", memory_budget_mb=budget_mb,
                  progress=False)
    index = json.loads((out / "index.json").read_text())
    batch, per_shard = index["options"]["batch_size"], index["sequences_per_shard"]
    assert 1 <= batch < per_shard and per_shard % batch == 0
    data_bytes = [s["sequences"] * (8 * CTX + 2 * CTX * 64 * 4) for s in index["shards"]]  # tokens + 2 × [ctx, 64] fp32
    assert max(data_bytes) <= budget_mb * 2**20 / 4
    assert all(abs(s["bytes"] - b) < 64 * 1024 for s, b in zip(index["shards"], data_bytes))  # header: stats only
    bigger = harvest(small_bundle, text_file, ["resid_post"], CTX, tmp_path / "c", memory_budget_mb=4 * budget_mb,
                     progress=False)
    assert json.loads((bigger / "index.json").read_text())["options"]["batch_size"] > batch
