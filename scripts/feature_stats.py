"""How much do frame features change within a video? Evidence for docs/results.md (TACo L2 vs L1)."""
import sys
import numpy as np
X = np.load(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/msrvtt-ae128-dev/features.npy").astype(np.float64)
n = X / np.linalg.norm(X, axis=-1, keepdims=True).clip(1e-8)
within = np.einsum("vtd,vsd->vts", n, n)
T = X.shape[1]; off = ~np.eye(T, dtype=bool)
w = within[:, off].mean()
adj = np.einsum("vtd,vtd->vt", n[:, 1:], n[:, :-1]).mean()
m = n.mean(1); m /= np.linalg.norm(m, axis=-1, keepdims=True)
rng = np.random.default_rng(0)
a, b = rng.integers(0, 800, 5000), rng.integers(0, 800, 5000); keep = a != b
across_frames = np.einsum("nd,nd->n", n[a[keep], rng.integers(0, T, keep.sum())], n[b[keep], rng.integers(0, T, keep.sum())]).mean()
across_means = np.einsum("nd,nd->n", m[a[keep]], m[b[keep]]).mean()
# fraction of variance that is temporal (within-video) vs between videos
mu_v = X.mean(1, keepdims=True)
within_var = ((X - mu_v) ** 2).sum(-1).mean()
between_var = ((mu_v - X.mean((0, 1), keepdims=True)) ** 2).sum(-1).mean()
print(f"cosine between frames of the same video: {w:.3f} (adjacent frames {adj:.3f})")
print(f"cosine between frames of different videos: {across_frames:.3f}; between video means: {across_means:.3f}")
print(f"variance within videos (over time): {within_var:.2f}; between video means: {between_var:.2f}; temporal share {within_var/(within_var+between_var):.2%}")
