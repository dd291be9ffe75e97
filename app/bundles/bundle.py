"""A loaded artifact bundle: file checks, the ONNX user encoder, the item catalogue.

The service knows models only through the manifest: any bundle whose ONNX maps
`item_seq` (B, L) int64, left-padded with 0, to `user_vec` (B, D) is served alike, and
score(item) = <user_vec, item_vectors[item]>. A bundle that reads event times (`needs_times`)
also gets the history's unix seconds: as the graph's second input (`onnx.time_input`) and/or
through the manifest's `history_transform` (app/bundles/history.py), applied before the max_len cut.
Items are addressed internally by their model index (1..N, 0 = padding); `add_items` grows
the catalogue online (cold-start items registered later), so the index is the one internal
identity for every item.

The manifest's schema and format check live in app/bundles/manifest.py; app/bundles/loader.py picks Bundle or
TextBundle (app/bundles/text.py) from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.bundles.ablation import AblationGraph, load_ablation
from app.bundles.clusters import Clusters, load_clusters
from app.bundles.history import apply_transform, check_transform
from app.bundles.index import IVF_MIN_ITEMS, RowTable, TopKIndex, build_index, cache_dir, files_key
from app.bundles.manifest import MANIFEST_FILE, BundleError, Manifest, read_manifest
from app.bundles.onnx import ThreadedSessions, ort_session
from app.bundles.spaces import OUTPUT_SPACE, ItemSpace, load_spaces

__all__ = ["REQUIRED_FILES", "Bundle", "BundleError", "check_bundle_dir"]

REQUIRED_FILES = (MANIFEST_FILE, "model.onnx", "item_vectors.npy", "item_ids.json", "popularity.npy")


@dataclass(frozen=True)
class BundleInfo:
    """What the service says of a bundle it serves (GET /readyz, POST /admin/reload)."""

    name: str
    model: str
    version: str
    num_items: int
    dim: int
    max_len: int
    path: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_bundle_dir(path: Path) -> Manifest:
    """The directory holds the required files, a manifest of a readable format and valid schema,
    and every file the manifest lists with its checksum. Raises BundleError on any defect."""
    if not path.is_dir():
        raise BundleError(f"{path} is not a directory")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}")
    manifest = read_manifest(path)
    for f in [*REQUIRED_FILES[1:], *manifest.named_files()]:
        if f not in manifest.files:
            raise BundleError(f"{MANIFEST_FILE} has no checksum for {f}")
    for fname, digest in manifest.files.items():
        fpath = path / fname
        if not fpath.is_file():
            raise BundleError(f"{fname} is listed in the manifest but missing")
        if _sha256(fpath) != digest:
            raise BundleError(f"checksum mismatch for {fname}")
    return manifest


class Bundle:
    """Everything one model needs at serving time, validated on load."""

    def __init__(self, path: Path, manifest: Manifest, ann_threshold: int) -> None:
        self.path = path
        self.manifest = manifest
        self.name: str = manifest.name
        self.model: str = manifest.model
        self.version: str = manifest.version
        self.max_len: int = manifest.max_len
        self.input_name: str = manifest.onnx.input
        self.output_name: str = manifest.onnx.output
        self.padding_index: int = manifest.onnx.padding_index
        self.time_input: str | None = manifest.onnx.time_input
        # Event types as an input (manifest `event_types`): type name -> id (1..; 0 pads).
        self.type_input: str | None = None if manifest.event_types is None else manifest.event_types.input
        names = manifest.event_types.names if manifest.event_types is not None else []
        self.type_ids: dict[str, int] = {t: n + 1 for n, t in enumerate(names)}
        if self.type_input is not None and manifest.history_transform is not None:
            raise BundleError("a bundle cannot read event types and a history_transform (it re-shapes the events)")
        self.history_transform = manifest.history_transform
        check_transform(self.history_transform)
        self.session = ort_session(path / "model.onnx")
        self.sessions = ThreadedSessions(path / "model.onnx", self.session)  # more threads: explanations

        # Mapped, not read: every worker shares the page cache's one copy (app/bundles/index.py).
        table = np.load(path / "item_vectors.npy", mmap_mode="r", allow_pickle=False)
        ids = json.loads((path / "item_ids.json").read_text())
        pop = np.load(path / "popularity.npy", allow_pickle=False)
        n, dim = manifest.num_items, manifest.dim
        if table.dtype != np.float32 or table.shape != (n, dim):
            raise BundleError(f"item_vectors.npy is {table.dtype}{table.shape}, manifest says float32({n}, {dim})")
        if len(ids) != n or len(set(ids)) != n:
            raise BundleError(f"item_ids.json has {len(ids)} ids ({len(set(ids))} distinct), expected {n}")
        if pop.shape != (n,):
            raise BundleError(f"popularity.npy has shape {pop.shape}, expected ({n},)")
        if not np.isfinite(table).all():
            raise BundleError("item_vectors.npy holds NaN/inf")
        self.dim = dim
        self.item_ids: list[str] = [str(i) for i in ids]  # row r <-> item index r + 1
        self.index_of: dict[str, int] = {item: r + 1 for r, item in enumerate(self.item_ids)}
        # Items by descending training popularity (stable: ties keep catalogue order).
        self.popular: np.ndarray = np.argsort(-pop, kind="stable").astype(np.int64) + 1
        self.popularity_score: np.ndarray = pop.astype(np.float32)
        files = manifest.files
        # A catalogue large enough for the IVF index: it and the unit vectors are built once per
        # machine into the index cache (named by the vectors' checksum) and mapped by every worker.
        cache = None
        if n >= max(ann_threshold, IVF_MIN_ITEMS):
            cache = cache_dir(files_key(sorted(files.items()), n, dim))
        labels = np.arange(1, n + 1, dtype=np.int64)
        self.index: TopKIndex = build_index(
            labels, table, ann_threshold, cache=cache / "ivf-scores.faiss" if cache else None
        )
        # Vectors by model index (row 0 = padding; online adds in a buffer of their own): what
        # explanations score and what the text path (TextBundle) encodes histories from.
        self._table = RowTable(table)
        # Cosine spaces for similar items and diversity; clusters for max_per_cluster (app/serving/diversity.py).
        self.spaces: dict[str, ItemSpace] = load_spaces(path, manifest.item_spaces, files, table, ann_threshold, cache)
        unit = self.spaces[OUTPUT_SPACE].table
        self.clusters: Clusters | None = load_clusters(path, manifest.clusters, files, unit)
        self.ablation: AblationGraph | None = load_ablation(path, manifest.ablation, files)  # explanations
        self._check_runs()

    @classmethod
    def load(cls, path: Path | str, ann_threshold: int = 20_000) -> Bundle:
        """Validate the directory (manifest, files, checksums), then load it as this class.

        A bundle with a `text` section needs TextBundle: app.bundles.loader.load_bundle picks the class."""
        path = Path(path)
        manifest = check_bundle_dir(path)
        if manifest.text is not None and cls is Bundle:
            raise BundleError(
                f"{path} is a text bundle ({manifest.model}): load it with app.bundles.loader.load_bundle"
            )
        return cls.from_checked(path, manifest, ann_threshold)

    @classmethod
    def from_checked(cls, path: Path, manifest: Manifest, ann_threshold: int) -> Bundle:
        """Build from a directory check_bundle_dir has passed; every load failure is a BundleError."""
        try:
            return cls(path, manifest, ann_threshold)
        except BundleError:
            raise
        except Exception as exc:  # a corrupt ONNX / npy file surfaces as many exception types
            raise BundleError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc

    def _check_runs(self) -> None:
        """Smoke-run the graph once so a bundle that cannot infer is rejected at load time."""
        probes = [np.array([1], dtype=np.int64), np.array([], dtype=np.int64)]
        times = [np.array([1_000_000_000], dtype=np.int64), np.array([], dtype=np.int64)] if self.needs_times else None
        out = self.user_vectors(probes, times)
        if out.shape != (2, self.dim) or not np.isfinite(out[0]).all():
            raise BundleError(f"model.onnx returned {out.shape}, expected (2, {self.dim})")

    @property
    def info(self) -> BundleInfo:
        return BundleInfo(
            name=self.name,
            model=self.model,
            version=self.version,
            num_items=len(self.item_ids),
            dim=self.dim,
            max_len=self.max_len,
            path=str(self.path),
        )

    def encode(self, items: Sequence[str]) -> np.ndarray:
        """External item ids -> model indices; ids the model does not know are dropped."""
        get = self.index_of.get
        return np.array([i for i in map(get, items) if i is not None], dtype=np.int64)

    @property
    def needs_times(self) -> bool:
        """Whether the encoder reads the events' times (then every call must pass them)."""
        return self.time_input is not None or self.history_transform is not None

    def encode_timed(self, items: Sequence[str], times: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Like `encode`, with each kept event's time (whole unix seconds, as training stores them)."""
        get = self.index_of.get
        idx = [get(i) for i in items]
        keep = [n for n, i in enumerate(idx) if i is not None]
        seen = np.array([idx[n] for n in keep], dtype=np.int64)
        return seen, np.floor(np.asarray([times[n] for n in keep], dtype=np.float64)).astype(np.int64)

    @property
    def needs_types(self) -> bool:
        """Whether the encoder reads each event's type (manifest `event_types`)."""
        return self.type_input is not None

    def encode_types(self, items: Sequence[str], types: Sequence[str]) -> np.ndarray:
        """The type ids of the events `encode(items)` keeps (items the model knows), in order; a type
        the bundle does not name reads as its first."""
        get, ids = self.index_of.get, self.type_ids
        return np.array([ids.get(t, 1) for i, t in zip(items, types, strict=True) if get(i) is not None], np.int64)

    def _type_batch(self, batch: np.ndarray, types: Sequence[np.ndarray] | None) -> np.ndarray:
        """(B, L) type ids aligned with the left-padded `batch`: the given ones (each cut like its
        history), or without them every event as the first type; 0 where items pad."""
        out: np.ndarray = (batch != self.padding_index).astype(np.int64)
        if types is None:
            return out
        out[:] = 0
        length = batch.shape[1]
        for row, t in zip(out, types, strict=True):
            t = np.asarray(t, dtype=np.int64)[-self.max_len :]
            if len(t):
                row[length - len(t) :] = t
        return out

    def encode_events(
        self, items: Sequence[str], times: Sequence[float] | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A read history -> (model indices, their times or None): times only for a bundle that reads them."""
        if self.needs_times:
            return self.encode_timed(items, times or [])
        return self.encode(items), None

    def user_vectors(
        self, histories: Sequence[np.ndarray], times: Sequence[np.ndarray] | None = None, threads: int = 1
    ) -> np.ndarray:
        """Histories of model indices (oldest first) [and their times] -> (B, D) user vectors, one ONNX call
        (`threads` intra-op threads: 1 = the serving session; more for a large batch, same numbers).
        A bundle that reads event types reads every event as its first type here (`typed_vectors`)."""
        return self._encode(histories, times, threads, None)

    def typed_vectors(
        self, histories: Sequence[np.ndarray], types: Sequence[np.ndarray], times: Sequence[np.ndarray] | None = None
    ) -> np.ndarray:
        """`user_vectors` with each history's event type ids (`encode_types`), for a bundle that reads them."""
        return self._encode(histories, times, 1, types)

    def _encode(
        self,
        histories: Sequence[np.ndarray],
        times: Sequence[np.ndarray] | None,
        threads: int,
        types: Sequence[np.ndarray] | None,
    ) -> np.ndarray:
        if self.needs_times:
            if times is None or len(times) != len(histories):
                raise ValueError(f"bundle {self.name} reads event times: pass one times array per history")
            rows = [apply_transform(self.history_transform, h, t) for h, t in zip(histories, times, strict=True)]
            seqs = [h[-self.max_len :] for h, _ in rows]
            tseqs = [np.asarray(t, dtype=np.int64)[-self.max_len :] for _, t in rows]
        else:
            seqs = [h[-self.max_len :] for h in histories]
        length = max(1, max(len(s) for s in seqs))
        batch = np.full((len(seqs), length), self.padding_index, dtype=np.int64)  # (B, L) left-padded
        for row, s in zip(batch, seqs, strict=True):
            if len(s):
                row[length - len(s) :] = s
        if self.time_input is None and self.type_input is None:
            return self.padded_vectors(batch, threads)
        feeds = {self.input_name: batch}
        if self.type_input is not None:
            feeds[self.type_input] = self._type_batch(batch, types)
        if self.time_input is not None:
            tbatch = np.zeros((len(seqs), length), dtype=np.int64)  # (B, L), 0 where items pad
            for row, t in zip(tbatch, tseqs, strict=True):
                if len(t):
                    row[length - len(t) :] = t
            feeds[self.time_input] = tbatch
        out: np.ndarray = self.sessions.get(threads).run([self.output_name], feeds)[0]
        return out

    def padded_vectors(self, batch: np.ndarray, threads: int = 1) -> np.ndarray:
        """(B, L) int64 model indices, left-padded with padding_index, L <= max_len -> (B, D) user vectors.

        The encoder call of `user_vectors` for a batch already built (bundles that read no times)."""
        feeds = {self.input_name: batch}
        if self.type_input is not None:  # every event as the bundle's first type
            feeds[self.type_input] = self._type_batch(batch, None)
        out: np.ndarray = self.sessions.get(threads).run([self.output_name], feeds)[0]
        return out

    @property
    def takes_text(self) -> bool:
        """Whether this bundle can encode a new item from its text (see app/bundles/text.py)."""
        return False

    def add_items(self, ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """Register new items (e.g. encoded from text) so they can be recommended at once."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        new = [i for i in ids if i not in self.index_of]
        if len(new) != len(ids):
            raise BundleError("some items are already in the catalogue")
        start = len(self.item_ids) + 1
        idx = np.arange(start, start + len(ids), dtype=np.int64)
        self.index.add(idx, vectors)
        self._table.append(vectors)
        self.spaces[OUTPUT_SPACE].add(idx, vectors)
        if self.clusters is not None:
            self.clusters.add(self.spaces[OUTPUT_SPACE].unit(idx))
        self.item_ids.extend(ids)
        self.index_of.update({item: int(i) for item, i in zip(ids, idx, strict=True)})
        return idx

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        """(m,) model indices -> (m, D) item vectors (score = <user_vec, vector>)."""
        return self._table.take(labels)

    def external(self, indices: np.ndarray) -> list[str]:
        ids = self.item_ids
        return [ids[i - 1] for i in indices.tolist()]
