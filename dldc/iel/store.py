"""The embedding store: an append-only cache of embeddings per scorer.

Image embeddings are keyed by the image file's sha256, text embeddings by the sha256 of the
caption text, and both by the scorer id: re-scoring after new captions, a new threshold or
a new manifest encodes only what the store lacks.

Layout: ``<root>/<scorer folder>/{image,text}-<n>.safetensors``, each file holding
``keys`` (uint8, ``(N, 32)`` sha256 digests), ``embeddings`` (float32, ``(N, D)``) and, for
texts, ``tokens`` (int32 untruncated token counts). The scorer id sits in each file's
metadata; files are written atomically, so a killed run leaves only complete parts, each with
its sha256 beside it (``<part>.safetensors.sha256``). A part whose checksum is missing or does
not match is logged, deleted and not loaded: its embeddings count as missing and are encoded
again, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open

from dldc.iel.base import column_name
from dldc.io import atomic_path, checksum_ok, remove_with_checksum, write_checksum, write_safetensors

KINDS = ("image", "text")
log = logging.getLogger(__name__)


def text_key(text: str) -> bytes:
    """The store key of a caption: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingStore:
    """Embeddings of one scorer, loaded into memory from every part file.

    Args:
        root: the store's folder (shared by all scorers).
        scorer_id: the scorer whose embeddings this is.
    """

    def __init__(self, root: str | Path, scorer_id: str):
        self.scorer_id = scorer_id
        digest = hashlib.sha256(scorer_id.encode()).hexdigest()[:10]
        self.folder = Path(root) / f"{column_name(scorer_id)[:60]}-{digest}"
        self._rows: dict[str, dict[bytes, int]] = {kind: {} for kind in KINDS}
        # One growing matrix per kind (capacity doubles): adding a part copies only its rows, and
        # a lookup reads the rows it needs, however many parts and keys the store holds.
        self._embeddings: dict[str, _Growing] = {kind: _Growing(torch.float32) for kind in KINDS}
        self._tokens = _Growing(torch.int32)
        self._parts = 0
        for kind in KINDS:
            for path in sorted(self.folder.glob(f"{kind}-*.safetensors")):
                self._parts = max(self._parts, _part_index(path) + 1)
                if not checksum_ok(path):  # damaged or unfinished: encode its embeddings again
                    log.warning("dropping embedding-store part %s", path)
                    remove_with_checksum(path)
                    continue
                with safe_open(str(path), framework="pt") as handle:
                    stored_id = (handle.metadata() or {}).get("scorer_id")
                if stored_id != scorer_id:
                    raise ValueError(f"{path} belongs to scorer {stored_id!r}, not {scorer_id!r}; remove it")
                self._append(kind, load_file(str(path)))

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def count(self, kind: str) -> int:
        """Number of stored embeddings of ``kind``."""
        return len(self._rows[kind])

    def missing(self, kind: str, keys: list[bytes]) -> list[bytes]:
        """The keys (deduplicated, in first-seen order) that the store lacks."""
        rows = self._rows[kind]
        return list(dict.fromkeys(key for key in keys if key not in rows))

    def add(self, kind: str, keys: list[bytes], embeddings: torch.Tensor, tokens: list[int] | None = None) -> None:
        """Store new embeddings and persist them as one part file (atomically)."""
        if not keys:
            return
        if len(keys) != len(embeddings):
            raise ValueError(f"{len(keys)} keys for {len(embeddings)} embeddings")
        tensors = {
            "keys": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).reshape(len(keys), -1),
            "embeddings": embeddings.float().contiguous(),
        }
        if kind == "text":
            tensors["tokens"] = torch.tensor(tokens if tokens is not None else [-1] * len(keys), dtype=torch.int32)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{kind}-{self._parts:06d}.safetensors"
        with atomic_path(path) as tmp:
            write_safetensors(tmp, tensors, metadata={"scorer_id": self.scorer_id, "kind": kind})
        write_checksum(path)
        self._parts += 1
        self._append(kind, tensors)

    def get(self, kind: str, keys: list[bytes]) -> torch.Tensor:
        """Embeddings for ``keys`` (each must be stored), in the keys' order."""
        rows = self._rows[kind]
        index = torch.tensor([rows[key] for key in keys], dtype=torch.long)
        return self._embeddings[kind].rows(index)

    def tokens(self, keys: list[bytes]) -> list[int]:
        """Untruncated token counts of stored texts."""
        rows = self._rows["text"]
        return self._tokens.rows(torch.tensor([rows[key] for key in keys], dtype=torch.long)).tolist()

    def _append(self, kind: str, tensors: dict[str, torch.Tensor]) -> None:
        rows = self._rows[kind]
        start = len(self._embeddings[kind])
        keys = tensors["keys"].numpy()
        rows.update(zip(map(bytes, keys), range(start, start + len(keys))))
        self._embeddings[kind].extend(tensors["embeddings"])
        if kind == "text":
            self._tokens.extend(tensors["tokens"])


class _Growing:
    """Rows appended to one tensor whose capacity doubles: appending is amortised O(rows added)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.data: torch.Tensor | None = None
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def extend(self, block: torch.Tensor) -> None:
        block = block.to(self.dtype)
        need = self.size + len(block)
        if self.data is None or need > len(self.data):
            grown = torch.empty((max(need, 2 * self.size, 1024), *block.shape[1:]), dtype=self.dtype)
            if self.data is not None:
                grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = block
        self.size = need

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        if self.data is None:
            raise KeyError("no rows stored")
        return self.data[: self.size][index]


def _part_index(path: Path) -> int:
    """The number of a part file (``image-000003.safetensors`` → 3; -1 when it has none)."""
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1
