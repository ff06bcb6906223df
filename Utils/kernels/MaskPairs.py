"""The positive pairs of the subspace term, enumerated from bit-packed masks (CPU, Numba).

A pair (a, b) of rows of the 0/1 embedding mask is a positive when
M_a·M_b ≥ ‖M_a‖₀ − δ and M_a·M_b ≥ ‖M_b‖₀ − δ (docs/method.md#positive-pairs-and-the-loosen-factor). Once a
model is pruned, positives are rare: with δ = 0 they are the rows with identical masks.
The dense route (:func:`Utils.objective.Losses.positive_pair_logit_sums`) still forms every
anchor × candidate mask product inside the popcount windows; this module packs each
mask row into 64-bit words, so M_a·M_b = popcount(M_a & M_b), and lists the positive
pairs themselves. The caller then sums a_n·b_m over that list with ordinary autograd.
Same pairs, so the same loss up to float rounding of the sums.

Within a pruning run the mask does not change, so neither do the positives: a
:class:`PairIndex` lists every row's positives against a whole table once per run, and
each batch takes its anchors' rows from it (the same pairs in the same order as
:func:`positive_pairs` on those anchors, so the same sums to the bit).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

try:
    import numba
except ImportError:  # the dense route keeps working without Numba
    numba = None

#: Above this many positive pairs the list is not worth building: the dense route is used.
MAX_PAIRS = 8_000_000


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """0/1 mask rows (n×d) as n × ⌈d/64⌉ uint64 words (bit j of word w = column 64w + j)."""
    bits = mask.detach().to("cpu", torch.bool).numpy()
    n, d = bits.shape
    words = (d + 63) // 64
    padded = np.zeros((n, words * 64), dtype=bool)
    padded[:, :d] = bits
    packed = np.packbits(padded.reshape(n, words, 64), axis=2, bitorder="little")  # n × words × 8 bytes
    return np.ascontiguousarray(packed).view(np.uint64).reshape(n, words)


if numba is not None:
    @numba.njit(inline="always")
    def _popcount(x):
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)

    @numba.njit(inline="always")
    def _is_positive(pa, pb, a, b, thr_a, thr_b):
        dot = 0
        for w in range(pa.shape[1]):
            dot += np.int64(_popcount(pa[a, w] & pb[b, w]))
        return dot >= thr_a and dot >= thr_b

    @numba.njit(parallel=True, cache=True)
    def _count_pairs(pa, pb, thr_a, thr_b, order_b, lo, hi, counts):
        """counts[a] = number of positives of anchor a among candidates order_b[lo[a]:hi[a]]."""
        for a in numba.prange(pa.shape[0]):
            c = 0
            for k in range(lo[a], hi[a]):
                b = order_b[k]
                if _is_positive(pa, pb, a, b, thr_a[a], thr_b[b]):
                    c += 1
            counts[a] = c

    @numba.njit(parallel=True, cache=True)
    def _fill_pairs(packed, thresholds, order_b, window, offsets, out):
        """Write anchor a's positives at out[offsets[a]:offsets[a+1]], candidates ascending
        (``packed`` = (pa, pb), ``thresholds`` = (thr_a, thr_b), ``window`` = (lo, hi) per
        anchor over ``order_b``, ``out`` = (anchor ids, candidate ids))."""
        pa, pb = packed
        thr_a, thr_b = thresholds
        lo, hi = window
        out_a, out_b = out
        for a in numba.prange(pa.shape[0]):
            p = offsets[a]
            start = p
            for k in range(lo[a], hi[a]):
                b = order_b[k]
                if _is_positive(pa, pb, a, b, thr_a[a], thr_b[b]):
                    out_a[p] = a
                    out_b[p] = b
                    p += 1
            out_b[start:p].sort()  # a fixed order, whatever the window order


def positive_pairs(anc_mask: torch.Tensor, cand_mask: torch.Tensor, loosen: float,
                   max_pairs: int = MAX_PAIRS) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(anchor index, candidate index) of every positive pair, or None to use the dense route.

    None when Numba is missing, the masks are not on the CPU, or there are more than
    ``max_pairs`` positives (dense masks, e.g. before any pruning, make most pairs positive).
    Only candidates whose popcount is within δ of the anchor's are tested: M_a·M_b ≤
    min(‖M_a‖₀, ‖M_b‖₀), so other pairs cannot be positive.
    """
    if numba is None or anc_mask.device.type != "cpu" or cand_mask.device.type != "cpu":
        return None
    pa, pb = pack_mask(anc_mask), pack_mask(cand_mask)
    cnt_a = anc_mask.detach().sum(dim=1).to(torch.float64).numpy()
    cnt_b = cand_mask.detach().sum(dim=1).to(torch.float64).numpy()
    thr_a, thr_b = cnt_a - float(loosen), cnt_b - float(loosen)
    order_b = np.argsort(cnt_b, kind="stable")
    sorted_b = cnt_b[order_b]
    lo = np.searchsorted(sorted_b, cnt_a - loosen, side="left")
    hi = np.searchsorted(sorted_b, cnt_a + loosen, side="right")
    counts = np.empty(pa.shape[0], dtype=np.int64)
    _count_pairs(pa, pb, thr_a, thr_b, order_b, lo, hi, counts)
    total = int(counts.sum())
    if total > max_pairs:
        return None
    offsets = np.zeros(pa.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    out_a = np.empty(total, dtype=np.int64)
    out_b = np.empty(total, dtype=np.int64)
    _fill_pairs((pa, pb), (thr_a, thr_b), order_b, (lo, hi), offsets, (out_a, out_b))
    return torch.from_numpy(out_a), torch.from_numpy(out_b)


class PairIndex:
    """Every row's positives against one fixed candidate table, listed once (CSR).

    ``indptr[r]:indptr[r + 1]`` of ``indices`` are the candidates (ascending) that form a
    positive with row r of the anchor table. :meth:`pairs_of` gives, for a batch's anchor
    rows, exactly what :func:`positive_pairs` would list for those rows.
    """

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor):
        self.indptr = indptr
        self.indices = indices

    @classmethod
    def build(cls, anc_mask: torch.Tensor, cand_mask: torch.Tensor, loosen: float,
              max_pairs: int = MAX_PAIRS) -> Optional["PairIndex"]:
        """The index of every row of ``anc_mask`` against ``cand_mask``; None where
        :func:`positive_pairs` would give None (no Numba, not on the CPU, too many pairs)."""
        pairs = positive_pairs(anc_mask, cand_mask, loosen, max_pairs)
        if pairs is None:
            return None
        rows, cols = pairs  # rows ascending, candidates ascending within a row
        indptr = torch.zeros(anc_mask.shape[0] + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(rows, minlength=anc_mask.shape[0]), dim=0, out=indptr[1:])
        return cls(indptr, cols)

    @property
    def n_pairs(self) -> int:
        return int(self.indices.numel())

    def pairs_of(self, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(position in ``rows``, candidate index) of every positive of the anchor rows ``rows``."""
        rows = rows.to("cpu", torch.int64)
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        positions = torch.repeat_interleave(torch.arange(rows.numel()), counts)
        # the k-th pair of anchor n sits at indices[starts[n] + k]
        first = torch.cumsum(counts, dim=0) - counts
        offsets = torch.arange(positions.numel()) - first[positions] + starts[positions]
        return positions, self.indices[offsets]
