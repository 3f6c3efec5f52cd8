"""PatchCore-style detector: a memory bank of pretrained patch features from good images.

Fit: a frozen ImageNet backbone (EfficientNet-Lite0 by default, weights read offline) maps
every good image to mid-level feature maps from two stages (1/8 and 1/16 of the input);
each map is locally aggregated (3x3 average), the coarser one is upsampled to the finer
grid, and the two are concatenated into one descriptor per patch. A greedy k-center coreset
keeps a small, well-spread subset of all training patches as the memory bank.

Inference: the anomaly score of a patch is its distance to the nearest bank patch; the
patch-score grid is upsampled to the input size and Gaussian-smoothed; the image score is
pooled from that map (its max, as in PatchCore, by default).

CPU-first (2 cores): the backbone runs BatchNorm-folded in NHWC layout, batched; the coreset
uses a random projection and an exact greedy selection that updates the min-distances of
all points for many new centres at once (one matrix multiply instead of one pass per centre);
nearest-neighbour search works in bounded blocks in matrix-multiply form.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaflow.model.config import PatchCoreConfig
from anomaflow.model.detectors.base import ProgressFn, save_torch_atomic
from anomaflow.model.detectors.features import FeatureDetector, aggregate, fit_record, print_feature_phase  # noqa: F401 - aggregate is part of this module's API

BANK_FILE = "memory_bank.pt"


# ----------------------------------------------------------------------------------------------
# coreset


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(dim=1)


def random_projection(x: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Gaussian random projection (Johnson-Lindenstrauss) of (N, D) to (N, dim); identity when dim >= D or 0."""
    if dim <= 0 or dim >= x.shape[1]:
        return x.float()
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(x.shape[1], dim, generator=gen) / math.sqrt(dim)
    return x.float() @ proj


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    *,
    projection_dim: int = 128,
    seed: int = 0,
    pool: int = 4096,
    max_batch: int = 512,
    row_chunk: int = 32768,
) -> torch.Tensor:
    """Indices of a greedy k-center coreset of `features` (N, D): each pick is the point farthest from all picks so far.

    Exact greedy, computed fast: the `pool` points farthest from the current centres are the
    only candidates for the next picks, as long as a candidate's updated distance is at least
    the pool's cut-off (every point outside has at most that distance, and distances only
    shrink). So centres are picked inside the small pool one by one, and the distances of all
    N points are updated once per round, for the whole batch of new centres, by a matrix
    multiply. Returns at most n_select indices (fewer only when the rest are exact duplicates).
    """
    n = features.shape[0]
    if n_select <= 0 or n == 0:
        return torch.zeros(0, dtype=torch.long)
    if n_select >= n:
        return torch.arange(n)
    z = random_projection(features, projection_dim, seed)
    sq = _sq_norms(z)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    min_d = (sq + sq[first] - 2.0 * (z @ z[first])).clamp_(min=0.0)
    min_d[first] = 0.0
    selected = [first]
    while len(selected) < n_select:
        m = min(pool, n)
        vals, idx = torch.topk(min_d, m, sorted=False)
        cutoff = float(vals.min()) if m < n else -1.0
        if float(vals.max()) <= 0.0:
            break  # every remaining point duplicates a centre
        pz, psq, pd = z[idx], sq[idx], vals.clone()
        new: list[int] = []
        budget = min(max_batch, n_select - len(selected))
        while len(new) < budget:
            j = int(torch.argmax(pd))
            best = float(pd[j])
            if best <= 0.0 or (new and best < cutoff):
                break  # the next farthest point may lie outside the pool: refresh all distances
            new.append(j)
            pd = torch.minimum(pd, (psq + psq[j] - 2.0 * (pz @ pz[j])).clamp_(min=0.0))
            pd[j] = 0.0
        centres = idx[torch.tensor(new, dtype=torch.long)]
        selected.extend(int(c) for c in centres)
        cz, csq = z[centres], sq[centres]
        for i in range(0, n, row_chunk):
            d = torch.addmm(csq.unsqueeze(0), z[i : i + row_chunk], cz.T, alpha=-2.0)
            d.add_(sq[i : i + row_chunk].unsqueeze(1))
            torch.minimum(min_d[i : i + row_chunk], d.amin(dim=1).clamp_(min=0.0), out=min_d[i : i + row_chunk])
        min_d[centres] = 0.0
    return torch.tensor(selected, dtype=torch.long)


def coverage_radius(features: torch.Tensor, subset: torch.Tensor, chunk: int = 8192) -> float:
    """Largest distance from any point to its nearest subset point (what the coreset minimises)."""
    d = nearest_distances(features, features[subset], k=1, query_chunk=chunk)
    return float(d.max())


# ----------------------------------------------------------------------------------------------
# nearest-neighbour search


def nearest_distances(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int = 1,
    *,
    query_chunk: int | None = 4096,
    bank_chunk: int = 16384,
    bank_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean Euclidean distance of each query (Q, D) to its k nearest rows of `bank` (M, D).

    Blocks of at most query_chunk x bank_chunk distances at a time (bounded memory), each
    computed as ||q||^2 - 2 q.b + ||b||^2 with one matrix multiply.
    """
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    k = min(k, bank.shape[0])
    bank_sq = _sq_norms(bank) if bank_sq is None else bank_sq
    if query_chunk is None:
        return _block_distances(queries, bank, bank_sq, k, bank_chunk)
    out = torch.empty(queries.shape[0], dtype=torch.float32)
    for i in range(0, queries.shape[0], query_chunk):
        out[i : i + query_chunk] = _block_distances(queries[i : i + query_chunk], bank, bank_sq, k, bank_chunk)
    return out


def _block_distances(
    q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, k: int, bank_chunk: int
) -> torch.Tensor:
    """Mean distance of the queries q to their k nearest bank rows, over bank blocks of bank_chunk
    rows. No loop over the queries: an exported graph (model.operations.export) keeps the batch size free.
    The neighbours are found with the ||q||^2 - 2 q.b + ||b||^2 expansion and their distances then
    computed directly (`exact_mean_distance`): the expansion loses digits to cancellation where q
    is close to b, which is where most normal patches are."""
    best: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for j in range(0, bank.shape[0], bank_chunk):
        d = torch.addmm(bank_sq[j : j + bank_chunk].unsqueeze(0), q, bank[j : j + bank_chunk].T, alpha=-2.0)
        if k == 1:
            part, idx = d.min(dim=1, keepdim=True)
            idx = idx + j
            if best is None or best_i is None:
                best, best_i = part, idx
            else:
                closer = part < best
                best, best_i = torch.where(closer, part, best), torch.where(closer, idx, best_i)
        else:
            part = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
            vals, idx = part.values, part.indices + j
            if best is not None and best_i is not None:
                vals, idx = torch.cat([best, vals], dim=1), torch.cat([best_i, idx], dim=1)
            keep = torch.topk(vals, min(k, vals.shape[1]), dim=1, largest=False)
            best, best_i = keep.values, idx.gather(1, keep.indices)
    assert best_i is not None
    return exact_mean_distance(q, bank, best_i)


def exact_mean_distance(q: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance of each query (Q, D) to the bank rows idx (Q, k), computed directly."""
    return (q.unsqueeze(1) - bank[idx]).pow(2).sum(-1).sqrt().mean(dim=1)


class FaissBank:
    """Exact k-NN over the memory bank with faiss IndexFlatL2: the same neighbours and distances
    (computed directly, as `nearest_distances` does) at half the time on 2 cores; faiss k-means and
    HNSW lost to our coreset and exact search (benchmarks/nearest_neighbours.py)."""

    def __init__(self, bank: torch.Tensor) -> None:
        import faiss

        self._faiss = faiss
        self.bank = bank.detach().cpu().float()
        b = np.ascontiguousarray(self.bank.numpy(), dtype=np.float32)
        self.index = faiss.IndexFlatL2(b.shape[1])
        self.index.add(b)

    def distances(self, queries: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Mean Euclidean distance of each query to its k nearest bank rows (like nearest_distances)."""
        self._faiss.omp_set_num_threads(torch.get_num_threads())  # the thread budget set for torch, on purpose
        queries = queries.detach().cpu().float()
        _, idx = self.index.search(np.ascontiguousarray(queries.numpy()), min(k, self.index.ntotal))
        return exact_mean_distance(queries, self.bank, torch.from_numpy(idx))


# ----------------------------------------------------------------------------------------------
# the detector


def _print_progress(rec: dict[str, Any]) -> None:
    if print_feature_phase("patchcore", rec, "patches"):
        return
    if rec.get("phase") == "coreset":
        print(f"patchcore: coreset {rec['bank_size']} of {rec['patches']} patches ({rec['seconds']:.1f}s)", flush=True)
    else:
        print(f"patchcore: memory bank {rec['bank_size']} x {rec['feature_dim']} in {rec['seconds']:.1f}s", flush=True)


class PatchCoreDetector(FeatureDetector):
    family = "patchcore"
    config_class = PatchCoreConfig
    config: PatchCoreConfig
    bank: torch.Tensor | None = None  # set by fit
    _bank_sq: torch.Tensor | None = None
    _index: FaissBank | None = None

    def bank_size_for(self, n_patches: int) -> int:
        """coreset_ratio of the patches, at least coreset_min_size, at most coreset_max_size and n_patches."""
        size = max(1, int(math.ceil(self.config.coreset_ratio * n_patches)), self.config.coreset_min_size)
        if self.config.coreset_max_size is not None:
            size = min(size, self.config.coreset_max_size)
        return min(size, n_patches)

    # -- learning ------------------------------------------------------------------------
    def fit(
        self, images: np.ndarray, holdout: np.ndarray | None = None, progress: ProgressFn | None = _print_progress
    ) -> list[dict[str, Any]]:
        """Build the memory bank from good images (the holdout is not needed: nothing is trained)."""
        if len(images) == 0:
            raise ValueError("cannot fit on zero images")
        images = self.set_frame(images)
        t0 = time.perf_counter()
        feats = self.features(images)
        patches = feats.reshape(-1, feats.shape[-1])
        n_patches = patches.shape[0]
        del feats
        t_feat = time.perf_counter() - t0
        if progress:
            progress(
                {
                    "phase": "features",
                    "images": len(images),
                    "patches": patches.shape[0],
                    "feature_dim": patches.shape[1],
                    "seconds": t_feat,
                }
            )
        t1 = time.perf_counter()
        n_bank = self.bank_size_for(patches.shape[0])
        with torch.inference_mode():
            idx = greedy_coreset(patches, n_bank, projection_dim=self.config.projection_dim, seed=self.seed)
        self._set_bank(patches[idx].clone())
        del patches
        t_core = time.perf_counter() - t1
        assert self.bank is not None
        if progress:
            progress({"phase": "coreset", "bank_size": self.bank.shape[0], "patches": n_patches, "seconds": t_core})
        rec = fit_record(
            t0,
            t_feat,
            coreset_seconds=t_core,
            images=len(images),
            patches=n_patches,
            bank_size=int(self.bank.shape[0]),
            feature_dim=int(self.bank.shape[1]),
        )
        self.history = [rec]
        if progress:
            progress(rec)
        return self.history

    def _set_bank(self, bank: torch.Tensor) -> None:
        self.bank = bank.float().contiguous()
        self._bank_sq = _sq_norms(self.bank)
        self._index = None  # built on first search

    # -- inference -----------------------------------------------------------------------
    def require_fitted(self) -> None:
        if self.bank is None:
            raise RuntimeError("the detector is not fitted (no memory bank)")

    def score_descriptors(self, feats: torch.Tensor, exportable: bool = False) -> torch.Tensor:
        """Nearest-neighbour distance of every patch: (N, h, w) on the feature grid."""
        self.require_fitted()
        _, h, w, d = feats.shape
        if self.config.search == "faiss" and not exportable:
            if self._index is None:
                self._index = FaissBank(self.bank)
            return self._index.distances(feats.reshape(-1, d), self.config.num_neighbors).reshape(-1, h, w)
        with torch.inference_mode():
            dist = nearest_distances(
                feats.reshape(-1, d),
                self.bank,
                self.config.num_neighbors,
                query_chunk=None if exportable else self.config.query_chunk,
                bank_chunk=self.config.bank_chunk,
                bank_sq=self._bank_sq,
            )
        return dist.reshape(-1, h, w)

    # -- persistence ---------------------------------------------------------------------
    def _save_weights(self, directory: Path) -> None:
        if self.bank is None:
            raise RuntimeError("nothing to save: the detector is not fitted")
        save_torch_atomic({"bank": self.bank}, directory / BANK_FILE)

    def _load_weights(self, directory: Path) -> None:
        state = torch.load(directory / BANK_FILE, map_location="cpu", weights_only=True)
        bank = state.get("bank") if isinstance(state, dict) else None
        if not isinstance(bank, torch.Tensor) or bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"{directory / BANK_FILE}: no memory bank tensor (N, D) in the file")
        if bank.shape[1] != self.feature_dim:
            raise ValueError(
                f"{directory / BANK_FILE}: bank has {bank.shape[1]} dims, "
                f"the configured features have {self.feature_dim}"
            )
        self._set_bank(bank)
