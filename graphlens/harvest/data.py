"""Reading DATA for a harvest: text, JSON Lines, Parquet, a ``datasets`` folder, or ``.npy`` token ids.

Every reader streams (bounded memory) and reports how much of the input it has read, for the ETA.
Text formats give documents (strings); ``.npy`` gives token ids: a 1-D array is one document of
tokens, a 2-D array is pre-cut sequences (each row sliced to ``context_size``, as SAELens does for
pre-tokenized datasets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from graphlens.errors import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
FORMATS = "a text file (.txt, one document per line), JSON Lines (.jsonl), Parquet (.parquet), " \
          "a `datasets` folder (save_to_disk) or token ids (.npy)"


@dataclass
class Source:
    """One DATA input; ``read`` counts what has been consumed so ``fraction()`` can drive the ETA."""

    path: Path
    kind: str  # "text" | "jsonl" | "parquet" | "datasets" | "npy"
    column: str = "text"
    _done: float = field(default=0.0, repr=False)
    _total: float = field(default=0.0, repr=False)

    def fraction(self) -> float:
        return self._done / self._total if self._total else 0.0

    def documents(self) -> Iterator[str]:
        """The documents' texts, in order (not for ``.npy``)."""
        readers = {"text": self._text_lines, "jsonl": self._json_lines, "parquet": self._parquet,
                   "datasets": self._datasets}
        return readers[self.kind]()

    # ---- text formats ------------------------------------------------------------------------------
    def _lines(self) -> Iterator[tuple[int, str]]:
        self._total = self.path.stat().st_size
        with open(self.path, "rb") as file:
            for number, raw in enumerate(file, 1):
                self._done += len(raw)
                try:
                    yield number, raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise DataError(f"{self.path}:{number}: not UTF-8 text; give a UTF-8 text file") from None

    def _text_lines(self) -> Iterator[str]:
        for _, line in self._lines():
            yield line

    def _json_lines(self) -> Iterator[str]:
        for number, line in self._lines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{self.path}:{number}: not a JSON object ({err.msg}); JSON Lines needs one object per line") from None
            if not isinstance(row, dict) or self.column not in row:
                found = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise DataError(f"{self.path}:{number}: no {self.column!r} field (found {found}); choose it with --column")
            yield _text(row[self.column], f"{self.path}:{number}", self.column)

    # ---- Arrow formats -----------------------------------------------------------------------------
    def _parquet(self) -> Iterator[str]:
        pq = _pyarrow("parquet").parquet
        try:
            file = pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow raises several types for damaged files
            raise DataError(f"{self.path}: not a readable Parquet file ({err})") from None
        self._check_column(file.schema_arrow.names)
        self._total = file.metadata.num_rows
        for batch in file.iter_batches(columns=[self.column], batch_size=1024):
            yield from self._column_texts(batch.column(0))

    def _datasets(self) -> Iterator[str]:
        pa = _pyarrow("datasets folder")
        files = _arrow_files(self.path)
        readers = []
        for path in files:
            try:
                readers.append(pa.ipc.open_stream(pa.memory_map(str(path))))
            except Exception as err:
                raise DataError(f"{path}: not a readable Arrow file of a `datasets` folder ({err})") from None
        self._check_column(readers[0].schema.names)
        self._total = sum(_arrow_rows(pa, path) for path in files)
        for reader in readers:
            for batch in reader:
                yield from self._column_texts(batch.column(batch.schema.get_field_index(self.column)))

    def _check_column(self, names: list[str]) -> None:
        if self.column not in names:
            raise DataError(f"{self.path}: no column {self.column!r} (columns: {', '.join(names)}); choose it with --column")

    def _column_texts(self, column) -> Iterator[str]:
        for value in column.to_pylist():
            self._done += 1
            yield _text(value, str(self.path), self.column)

    # ---- token ids ---------------------------------------------------------------------------------
    def token_array(self, d_vocab: int) -> np.ndarray:
        """The ``.npy`` token ids (memory-mapped), checked: integers in [0, d_vocab), 1-D or 2-D."""
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"{self.path}: not a readable .npy file ({err})") from None
        if not np.issubdtype(array.dtype, np.integer) or array.ndim not in (1, 2):
            raise DataError(f"{self.path}: token ids must be a 1-D or 2-D integer array, got {array.dtype} {array.shape}")
        self._total = array.shape[0]
        return array

    def token_documents(self, array: np.ndarray, d_vocab: int) -> Iterator[np.ndarray]:
        """A 1-D array as one document, in chunks (each checked against ``d_vocab``)."""
        for start in range(0, len(array), 1 << 16):
            chunk = np.asarray(array[start:start + (1 << 16)], dtype=np.int64)
            _check_ids(chunk, d_vocab, self.path)
            self._done = start + len(chunk)
            yield chunk

    def token_rows(self, array: np.ndarray, context_size: int, d_vocab: int) -> Iterator[np.ndarray]:
        """Rows of a 2-D array, sliced to ``context_size``."""
        if array.shape[1] < context_size:
            raise DataError(f"{self.path}: rows of {array.shape[1]} tokens are shorter than --context-size {context_size}")
        for index in range(array.shape[0]):
            row = np.asarray(array[index, :context_size], dtype=np.int64)
            _check_ids(row, d_vocab, self.path)
            self._done = index + 1
            yield row


def open_source(path: str | Path, column: str = "text") -> Source:
    """The reader for ``path``, chosen by its suffix (a folder: a ``datasets`` folder)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; DATA is {FORMATS}")
    if path.is_dir():
        return Source(path, "datasets", column)
    suffix = path.suffix.lower()
    for kind, suffixes in (("text", TEXT_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("npy", (".npy",))):
        if suffix in suffixes:
            return Source(path, kind, column)
    raise DataError(f"{path}: unknown DATA format {suffix or '(no suffix)'!r}; DATA is {FORMATS}")


def _text(value, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} holds {type(value).__name__}, not text; choose a text column with --column")
    return value


def _check_ids(ids: np.ndarray, d_vocab: int, path: Path) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= d_vocab):
        bad = sorted(set(ids[(ids < 0) | (ids >= d_vocab)].tolist()))[:5]
        raise DataError(f"{path}: token ids out of the model's range [0, {d_vocab}): {bad}")


def _pyarrow(what: str):
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError(f"reading a {what} needs pyarrow: pip install 'graphlens[harvest]'") from None
    return pyarrow


def _arrow_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` folder (a Dataset, or the ``train`` split of a DatasetDict)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        split = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
        if split is None:
            raise DataError(f"{folder}: a DatasetDict without a 'train' split ({splits}); give the split's folder")
        folder = folder / split
    state = folder / "state.json"
    if not state.is_file():
        raise DataError(f"{folder}: a folder DATA must be written by `datasets`' save_to_disk (no state.json)")
    try:
        files = [folder / entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise DataError(f"{state}: not a `datasets` state file (no _data_files list)") from None
    missing = [f.name for f in files if not f.is_file()]
    if not files or missing:
        raise DataError(f"{folder}: data files missing: {missing or 'none listed'}")
    return files


def _arrow_rows(pa, path: Path) -> int:
    return sum(batch.num_rows for batch in pa.ipc.open_stream(pa.memory_map(str(path))))
