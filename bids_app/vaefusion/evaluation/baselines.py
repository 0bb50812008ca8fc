"""PCA baselines on the same folds and classifier as the VAE (SPEC section 3, "Evaluation").

* ``pca-early``: a subject's volumes concatenated into one vector; one PCA over subjects;
  ``l`` components.
* ``pca-late``: one PCA per modality over subjects, ``l`` components each; the scores are
  concatenated modality-major (``n_modalities * l`` features, like the VAE's).
* ``pca-shared``: one PCA over all volumes of the training subjects as samples, ``l``
  components; every volume is projected and a subject's ``n_modalities`` score vectors are
  concatenated modality-major: the linear twin of the shared VAE. With ``--scaling
  voxelwise`` it is fitted to what the network sees: every volume standardised voxel by voxel
  with its modality's training-fold mean and (floored) SD, the rule of
  :func:`vaefusion.model.scaling.floored_sds`. The fair twin gets the modality mean maps for
  free, as the network does.

They see the VAE's data: the cached stacks reduced by ``--downsample`` with the very function
the VAE's data loader uses (:func:`vaefusion.model.network.downsample_volumes`, area
averaging), before the brain mask and any PCA; :func:`analysis_grid` names that grid.

In every fold the PCA is fitted on the fold's training subjects only, the same subjects the
VAE is fitted on (validation subjects only select the VAE's epoch), and then applied to all
subjects, so neither a test nor a validation subject shapes the components; the classifier is
then trained on train + validation for every method alike. When ``l`` exceeds what the
training data allow (scikit-learn's rule ``n_components <= min(n_samples, n_features)``) the
method is "not available" (the paper's "X"): :class:`NotAvailable`.

Memory (real data: a few hundred subjects x 54 volumes x ~60k in-brain voxels):

* Subjects are streamed: ``subject_arrays`` is a sequence or a callable ``i -> (n_mod, V)``
  array (see :func:`cache_loader`), never one big matrix.
* ``pca-early`` and ``pca-late`` are exact PCAs computed from Gram (kernel) matrices.
  :func:`modality_grams` accumulates the per-modality subject x subject inner products
  ``G[m, i, j] = <x_im, x_jm>`` in float64 in one blocked pass (``n_mod * n^2 * 8`` bytes,
  39 MB for 300 subjects); ``pca-early``'s Gram is their sum over modalities, so the
  ``n x (54 * 60k)`` matrix is never formed. Both are shared by all folds and latent dims: a
  PCA only needs the Gram block of its training subjects (centred with the training mean) and,
  for projecting, inner products of each subject with the training subjects. Using the Gram
  entries of test subjects for projection is exactly ``PCA.transform``, not fitting.
* ``pca-shared`` has ``n_train * n_mod`` samples (~15k), too many for a Gram eigenproblem per
  fold, so it is a randomized PCA (Halko, Martinsson & Tropp 2011; the algorithm of
  ``PCA(svd_solver="randomized")`` with QR power iterations) whose products with the centred
  data matrix are accumulated subject by subject: memory O((V + n_train * n_mod) * (l + 10)),
  cost ``2 * n_iter + 4`` passes over the subjects per fold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

from vaefusion.errors import DataError
from vaefusion.inputs.cache import load_stack

#: One subject's volumes as an (n_modalities, n_voxels) array, by index or as a list.
SubjectArrays = Sequence[np.ndarray] | Callable[[int], np.ndarray]


#: Components whose singular value is below this fraction of the largest carry no variance
#: (e.g. the n-th component of n centred samples); their scores are set to 0 instead of an
#: arbitrary direction, so results are deterministic.
_RELATIVE_SV_TOL = 1e-5


class NotAvailable(Exception):
    """A PCA baseline cannot have ``latent_dim`` components with this many training samples."""

    def __init__(self, method: str, latent_dim: int, limit: int) -> None:
        super().__init__(
            f"{method} is not available at latent dimension {latent_dim}: a PCA of these "
            f"training data has at most {limit} components."
        )
        self.method = method
        self.latent_dim = latent_dim
        self.limit = limit


# --------------------------------------------------------------------------------- input
def brain_mask(stacks: Iterable[np.ndarray]) -> np.ndarray:
    """Voxels (flattened, C order) that are nonzero in any volume of any of ``stacks``.

    ``stacks`` are (n_modalities, X, Y, Z) or (n_modalities, V) arrays. Dropping voxels that
    are zero in every training volume does not change any PCA (their mean and loadings are 0),
    it only saves memory; so a mask over all subjects gives the same results as a per-fold one.
    """
    mask: np.ndarray | None = None
    for stack in stacks:
        a = np.asarray(stack)
        nonzero = (a.reshape(a.shape[0], -1) != 0).any(axis=0)
        mask = nonzero if mask is None else mask | nonzero
    if mask is None or not mask.any():
        raise DataError("Every volume is all zeros, so there is no brain voxel to analyse.")
    return mask


def analysis_grid(source_grid: Sequence[int], downsample: int) -> str:
    """The grid every method analyses, as recorded in ``metrics.tsv``: ``"14x16x13"``."""
    from vaefusion.model.network import downsampled_grid

    return "x".join(str(n) for n in downsampled_grid(source_grid, downsample))


def load_at_grid(path: Path, downsample: int = 1) -> np.ndarray:
    """A cached subject as (n_modalities, X, Y, Z) float32 on the VAE's grid.

    The same steps as the VAE's data loader (float32, then area averaging by ``downsample``),
    so a baseline and the VAE see identical arrays.
    """
    stack = np.asarray(load_stack(path), dtype=np.float32)
    if downsample == 1:
        return stack
    import torch

    from vaefusion.model.network import downsample_volumes

    x = downsample_volumes(torch.from_numpy(stack).unsqueeze(1), downsample)
    return x.squeeze(1).numpy()


def cache_loader(paths: Sequence[Path], mask: np.ndarray | None = None, downsample: int = 1
                 ) -> Callable[[int], np.ndarray]:
    """``i -> (n_modalities, V)`` float32 array of cached subject ``paths[i]`` (in-mask voxels)
    on the grid reduced by ``downsample`` (:func:`load_at_grid`)."""

    def load(i: int) -> np.ndarray:
        stack = load_at_grid(paths[i], downsample)
        flat = stack.reshape(stack.shape[0], -1)
        return flat[:, mask] if mask is not None else flat

    return load


def preloaded(load: Callable[[int], np.ndarray], n_subjects: int,
              budget_bytes: int) -> SubjectArrays:
    """Every subject read once into memory when they fit in ``budget_bytes``, else ``load``.

    The PCA baselines read the data many times (``pca-shared``: ``2 * n_iter + 4`` passes per
    fold); at a coarse ``--downsample`` grid the data are small enough to keep.
    """
    first = load(0)
    if first.nbytes * n_subjects > budget_bytes:
        return load
    return [first, *(load(i) for i in range(1, n_subjects))]


def as_loader(subject_arrays: SubjectArrays, n_subjects: int) -> Callable[[int], np.ndarray]:
    """A callable returning subject ``i`` as a 2-D float32 (n_modalities, V) array."""
    if not callable(subject_arrays) and len(subject_arrays) != n_subjects:
        raise ValueError(f"{len(subject_arrays)} subject arrays for {n_subjects} labels")
    get = subject_arrays if callable(subject_arrays) else subject_arrays.__getitem__
    shape: list[tuple[int, int]] = []

    def load(i: int) -> np.ndarray:
        a = np.asarray(get(int(i)), dtype=np.float32)
        a = a.reshape(a.shape[0], -1)
        if not shape:
            shape.append(a.shape)
        elif a.shape != shape[0]:
            raise DataError(
                f"Subject {i} has {a.shape[0]} volumes of {a.shape[1]} voxels, but subjects "
                f"before it have {shape[0][0]} of {shape[0][1]}; re-run the participant level."
            )
        return a

    return load


# --------------------------------------------------------------------------------- Gram PCA
def modality_grams(subject_arrays: SubjectArrays, n_subjects: int,
                   block_bytes: int = 256 * 2**20) -> np.ndarray:
    """Per-modality Gram matrices ``G[m, i, j] = <x_im, x_jm>`` (float64, (n_mod, n, n)).

    Subjects are read in blocks of about ``block_bytes`` (float64); each pair of blocks is
    multiplied once, so the data are read ``1 + n / (2 * block)`` times. ``G.sum(0)`` is the
    Gram matrix of the concatenated subject vectors (``pca-early``).
    """
    load = as_loader(subject_arrays, n_subjects)
    n_mod, n_vox = load(0).shape
    block = max(1, int(block_bytes // (n_mod * n_vox * 8)))
    starts = list(range(0, n_subjects, block))
    grams = np.empty((n_mod, n_subjects, n_subjects))

    def read(start: int) -> np.ndarray:
        # (n_mod, b, V): modality first so one batched matmul gives all modalities' blocks
        rows = [load(i) for i in range(start, min(start + block, n_subjects))]
        return np.ascontiguousarray(np.stack(rows, axis=1), dtype=np.float64)

    for bi, si in enumerate(starts):
        xi = read(si)
        ii = slice(si, si + xi.shape[1])
        grams[:, ii, ii] = np.matmul(xi, xi.transpose(0, 2, 1))
        for sj in starts[bi + 1:]:
            xj = read(sj)
            jj = slice(sj, sj + xj.shape[1])
            cross = np.matmul(xi, xj.transpose(0, 2, 1))
            grams[:, ii, jj] = cross
            grams[:, jj, ii] = cross.transpose(0, 2, 1)
    return grams


def _fix_signs(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Flip each component so its largest-magnitude score among ``rows`` is positive.

    A PCA component's sign is arbitrary; fixing it makes runs reproducible (a linear SVM on
    standardized features gives the same decisions either way).
    """
    ref = scores[rows]
    pick = np.abs(ref).argmax(axis=0)
    signs = np.sign(ref[pick, np.arange(scores.shape[1])])
    signs[signs == 0] = 1.0
    return scores * signs


def gram_pca_scores(gram: np.ndarray, fit_idx: np.ndarray, n_components: int) -> np.ndarray:
    """Exact PCA scores of all subjects, the PCA fitted on subjects ``fit_idx`` only.

    ``gram`` is the (n, n) matrix of uncentred inner products of all subjects. This equals
    ``PCA(n_components).fit(X[fit_idx]).transform(X)`` up to each component's sign: with the
    training mean ``mu`` and the centred training Gram ``Kc = U diag(lam) U^T``, the loading
    of component ``k`` is ``Xc^T u_k / sqrt(lam_k)``, so a subject's score is its centred
    inner products with the centred training subjects times ``u_k / sqrt(lam_k)``.
    """
    fit_idx = np.asarray(fit_idx)
    t = fit_idx.size
    k_tt = gram[np.ix_(fit_idx, fit_idx)]
    row_mean = k_tt.mean(axis=1)  # X_T @ mu
    grand = k_tt.mean()  # mu @ mu
    k_c = k_tt - row_mean[:, None] - row_mean[None, :] + grand
    k = min(n_components, t)
    lam, u = linalg.eigh(k_c, subset_by_index=[t - k, t - 1])
    lam, u = lam[::-1], u[:, ::-1]  # largest first
    # centred inner products of every subject with the centred training subjects
    k_x = gram[:, fit_idx]
    k_xc = k_x - row_mean[None, :] - k_x.mean(axis=1, keepdims=True) + grand
    top = float(lam[0])
    # eigenvalues are squared singular values; identical training subjects leave none
    keep = lam > top * _RELATIVE_SV_TOL**2 if top > 0 else np.zeros(k, dtype=bool)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    scores = np.zeros((gram.shape[0], n_components))
    scores[:, :k] = (k_xc @ u) * scale
    return _fix_signs(scores, fit_idx)


# --------------------------------------------------------------------------------- shared PCA
def _orthonormal(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis (reduced QR) of the columns of a tall, thin matrix."""
    # single-threaded: multithreaded OpenBLAS QR of tall-thin matrices can be 5-10x slower
    # than one thread (seen on 2-core machines), and this QR is small next to the data passes
    with threadpool_limits(limits=1, user_api="blas"):
        q, _ = np.linalg.qr(a)
    return q


def voxelwise_statistics(load: Callable[[int], np.ndarray], fit_idx: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Per-modality mean maps and floored SD maps ``(n_mod, V)`` (float32) of the subjects
    ``fit_idx``: the network's voxelwise statistics (two passes, float64 sums)."""
    import torch

    from vaefusion.model.scaling import floored_sds

    total = sum(load(i).astype(np.float64) for i in fit_idx)
    mean = total / fit_idx.size
    var = sum((load(i) - mean) ** 2 for i in fit_idx) / fit_idx.size
    sd = floored_sds(torch.from_numpy(np.sqrt(var))).numpy()
    return mean.astype(np.float32), sd.astype(np.float32)


def shared_pca_scores(subject_arrays: SubjectArrays, n_subjects: int, fit_idx: np.ndarray,
                      n_components: int, seed: int = 0, n_iter: int = 4,
                      n_oversamples: int = 10, voxelwise: bool = False) -> np.ndarray:
    """``pca-shared`` features (n_subjects, n_mod * n_components), the PCA fitted on ``fit_idx``.

    The samples are the volumes of the training subjects; with ``voxelwise`` each is first
    standardised with its modality's training mean and SD maps
    (:func:`voxelwise_statistics`), as the voxelwise network's input is. A randomized range
    finder with ``n_iter`` QR-normalized power iterations and ``n_oversamples`` extra columns,
    as in scikit-learn's randomized PCA, with every product against the centred data matrix
    accumulated subject by subject (float32 products, float64 accumulators).
    """
    load = as_loader(subject_arrays, n_subjects)
    fit_idx = np.asarray(fit_idx)
    n_mod, n_vox = load(fit_idx[0]).shape
    n_samples = fit_idx.size * n_mod
    rank = min(n_components + n_oversamples, n_samples, n_vox)
    rng = np.random.default_rng(seed)

    if voxelwise:
        # standardised training volumes have mean 0, so no further centring
        means, sds = voxelwise_statistics(load, fit_idx)
        inv = np.where(sds > 0, 1.0 / np.where(sds > 0, sds, 1.0), 0.0).astype(np.float32)

        def centred(i: int) -> np.ndarray:
            return (load(i) - means) * inv
    else:
        total = np.zeros(n_vox)
        for i in fit_idx:
            total += load(i).sum(axis=0, dtype=np.float64)
        mean = (total / n_samples).astype(np.float32)

        def centred(i: int) -> np.ndarray:
            return load(i) - mean

    def times(right: np.ndarray) -> np.ndarray:
        """Centred training data (n_samples, V) @ right (V, r)."""
        r32 = right.astype(np.float32)
        return np.concatenate([centred(i) @ r32 for i in fit_idx]).astype(np.float64)

    def t_times(left: np.ndarray) -> np.ndarray:
        """Centred training data transposed (V, n_samples) @ left (n_samples, r)."""
        out = np.zeros((n_vox, left.shape[1]))
        l32 = left.astype(np.float32)
        for r, i in enumerate(fit_idx):
            out += centred(i).T @ l32[r * n_mod:(r + 1) * n_mod]
        return out

    q = _orthonormal(times(rng.standard_normal((n_vox, rank))))
    for _ in range(n_iter):
        z = _orthonormal(t_times(q))
        q = _orthonormal(times(z))
    b = t_times(q).T  # B = Q^T A_c = U S V^T, (rank, V)
    with threadpool_limits(limits=1, user_api="blas"):
        _, sv, vt = linalg.svd(b, full_matrices=False)
    k = min(n_components, sv.size)
    components = vt[:k].astype(np.float32)
    keep = sv[:k] > sv[0] * _RELATIVE_SV_TOL if sv[0] > 0 else np.zeros(k, dtype=bool)

    scores = np.zeros((n_subjects, n_mod, n_components))
    for i in range(n_subjects):
        scores[i, :, :k] = (centred(i) @ components.T) * keep
    flat = _fix_signs(scores.reshape(n_subjects * n_mod, n_components),
                      (fit_idx[:, None] * n_mod + np.arange(n_mod)).ravel())
    return flat.reshape(n_subjects, n_mod * n_components)  # modality-major per subject
