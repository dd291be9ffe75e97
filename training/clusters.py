"""Bundle extras for similar items and diversity: item clusters and per-layer item representations.

Clusters: spherical k-means (faiss) on the L2-normalised item vectors, so a cluster is a region
of the cosine space that GET /items/{id}/similar and MMR re-ranking use too. Written as
clusters.npy (int32 cluster id per catalogue row) and read by app/serving/diversity.py.

Layer vectors (models with `hidden_states`, i.e. BERT4Rec): each item i is run through the
encoder as the two-token sequence [i, mask], the way inference sees a history's newest item,
and its representation is the concatenation of the last four hidden states at i's position
(fewer when the encoder has fewer: hidden states are the embedding output and each block's).
Written as item_vectors_layers4.npy and declared in the manifest as the `layers4` item space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

CLUSTERS_FILE = "clusters.npy"
LAYERS_FILE = "item_vectors_layers4.npy"
LAYERS_SPACE = "layers4"


def default_num_clusters(num_items: int) -> int:
    """~sqrt(N / 2) (41 for ML-1M's 3,416 items), between 2 and 256: coarse enough for a cap to matter."""
    return int(min(256, max(2, round(np.sqrt(num_items / 2)))))


def item_clusters(vectors: np.ndarray, num_clusters: int | None = None, seed: int = 0) -> np.ndarray:
    """(N, D) item vectors -> (N,) int32 cluster ids from spherical k-means (deterministic for a seed)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.ascontiguousarray(np.divide(x, norm, out=np.zeros_like(x), where=norm > 0))
    k = min(num_clusters or default_num_clusters(len(x)), len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int32)


def write_clusters(out: Path, vectors: np.ndarray, num_clusters: int | None = None) -> dict[str, Any]:
    """clusters.npy in `out`; returns the manifest's `clusters` section."""
    assign = item_clusters(vectors, num_clusters)
    np.save(out / CLUSTERS_FILE, assign)
    return {
        "file": CLUSTERS_FILE,
        "num_clusters": int(assign.max()) + 1,
        "method": "spherical k-means (faiss) on the item vectors, seed 0",
    }


@torch.no_grad()
def layer_item_vectors(model: Any, layers: int = 4, batch: int = 1024) -> np.ndarray:
    """(N, layers·D) per-item concatenated hidden states (see the module docstring)."""
    if not hasattr(model, "hidden_states") or not hasattr(model, "mask_token"):
        raise ValueError(f"{type(model).__name__} has no bidirectional encoder with a [mask] token")
    model.eval()
    out = []
    for start in range(1, model.num_items + 1, batch):
        items = torch.arange(start, min(start + batch, model.num_items + 1))
        seq = torch.stack([items, torch.full_like(items, model.mask_token)], dim=1)  # (B, 2): [i, mask]
        states = model.hidden_states(seq)[-layers:]  # each (B, 2, D)
        out.append(torch.cat([h[:, 0] for h in states], dim=-1))
    return torch.cat(out).float().numpy()


def write_layer_vectors(out: Path, model: Any) -> dict[str, Any]:
    """item_vectors_layers4.npy in `out`; returns the manifest's `item_spaces` section."""
    vecs = np.ascontiguousarray(layer_item_vectors(model), dtype=np.float32)
    np.save(out / LAYERS_FILE, vecs)
    return {
        LAYERS_SPACE: {
            "file": LAYERS_FILE,
            "dim": int(vecs.shape[1]),
            "what": "concatenated last four hidden states of each item run as [item, mask]",
        }
    }
