"""Factored matrices: a matrix kept as the product ``A @ B`` of two factors.

A numpy port of TransformerLens' ``FactoredMatrix`` (same API and semantics as
``transformer_lens.FactoredMatrix`` in TransformerLens 3.9). Keeping the two
factors separate makes low-rank products such as ``W_Q @ W_K.T`` or
``W_V @ W_O`` cheap to store, and lets the SVD, eigenvalues and norm be
computed from the small ``mdim``-sized pieces instead of the full product.
"""

from __future__ import annotations

import numbers
import operator
import warnings
from functools import cached_property
from typing import Any, List, Tuple, Union, overload

import numpy as np
from jaxtyping import Complex, Float

ArrayLike = Union[np.ndarray, Any]
Index = Union[int, slice, None, Tuple[Any, ...], List[Any], np.ndarray]


def _swap_last(x: Float[np.ndarray, "... a b"]) -> Float[np.ndarray, "... b a"]:
    """Swap the last two axes (a batched matrix transpose)."""
    return np.swapaxes(x, -1, -2)


def _is_int(x: Any) -> bool:
    """True for Python and numpy integers (not bools, not arrays)."""
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))


def _as_factor(x: ArrayLike) -> np.ndarray:
    """Turn a factor into an ndarray without copying when it already is one."""
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise IndexError(
            f"FactoredMatrix factors must have at least 2 dimensions, got shape {arr.shape}"
        )
    return arr


class FactoredMatrix:
    """A (batch of) matrices represented as the product ``A @ B``.

    ``A`` has shape ``[..., ldim, mdim]`` and ``B`` has shape
    ``[..., mdim, rdim]``; their leading dimensions are broadcast against each
    other. Offers cheap products with arrays and other factored matrices, and
    SVD / eigenvalues / Frobenius norm computed without forming ``A @ B``.
    """

    # Make numpy defer to our reflected operators, so that ``array @ fm`` and
    # ``scalar * fm`` call ``__rmatmul__`` / ``__rmul__`` instead of numpy
    # trying to treat this object as an array element.
    __array_ufunc__ = None

    A: Float[np.ndarray, "... ldim mdim"]
    B: Float[np.ndarray, "... mdim rdim"]

    def __init__(
        self,
        A: Float[np.ndarray, "... ldim mdim"],
        B: Float[np.ndarray, "... mdim rdim"],
    ):
        """Build ``A @ B`` from its factors, broadcasting their leading dims.

        Raises ``AssertionError`` if the inner dimensions differ and
        ``RuntimeError`` if the leading dimensions cannot be broadcast (the
        same exception types TransformerLens raises).
        """
        A = _as_factor(A)
        B = _as_factor(B)
        if A.shape[-1] != B.shape[-2]:
            raise AssertionError(
                "Factored matrix must match on inner dimension, "
                f"shapes were a: {A.shape}, b:{B.shape}"
            )
        self.ldim: int = A.shape[-2]
        self.mdim: int = B.shape[-2]
        self.rdim: int = B.shape[-1]
        self.has_leading_dims: bool = A.ndim > 2 or B.ndim > 2
        try:
            leading = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except ValueError as e:
            raise RuntimeError(
                "Shape mismatch: Cannot broadcast leading dimensions. "
                f"A has shape {A.shape}, B has shape {B.shape}. {e}"
            ) from e
        self.shape: Tuple[int, ...] = tuple(int(d) for d in leading) + (self.ldim, self.rdim)
        a_shape = self.shape[:-2] + (self.ldim, self.mdim)
        b_shape = self.shape[:-2] + (self.mdim, self.rdim)
        # Only broadcast when needed: an unchanged factor stays the caller's array.
        self.A = A if A.shape == a_shape else np.broadcast_to(A, a_shape)
        self.B = B if B.shape == b_shape else np.broadcast_to(B, b_shape)

    # ------------------------------------------------------------------ products

    @overload
    def __matmul__(
        self, other: Union[Float[np.ndarray, "... rdim new_rdim"], "FactoredMatrix"]
    ) -> "FactoredMatrix":
        ...

    @overload
    def __matmul__(self, other: Float[np.ndarray, "rdim"]) -> Float[np.ndarray, "... ldim"]:
        ...

    def __matmul__(
        self,
        other: Union[
            Float[np.ndarray, "... rdim new_rdim"], Float[np.ndarray, "rdim"], "FactoredMatrix"
        ],
    ) -> Union["FactoredMatrix", Float[np.ndarray, "... ldim"]]:
        """``self @ other``: a FactoredMatrix for matrices, a plain array for vectors."""
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        other = np.asarray(other)
        if other.ndim < 2:
            if other.shape[-1:] != (self.rdim,):
                raise AssertionError(
                    "Right vector must match on inner dimension, "
                    f"shapes were self: {self.shape}, other:{other.shape}"
                )
            # Collapse the factorisation: A @ (B @ v), keeping leading dims.
            return (self.A @ (self.B @ other[..., None]))[..., 0]
        if other.shape[-2] != self.rdim:
            raise AssertionError(
                "Right matrix must match on inner dimension, "
                f"shapes were self: {self.shape}, other:{other.shape}"
            )
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    @overload
    def __rmatmul__(
        self, other: Union[Float[np.ndarray, "... new_ldim ldim"], "FactoredMatrix"]
    ) -> "FactoredMatrix":
        ...

    @overload
    def __rmatmul__(self, other: Float[np.ndarray, "ldim"]) -> Float[np.ndarray, "... rdim"]:
        ...

    def __rmatmul__(
        self,
        other: Union[
            Float[np.ndarray, "... new_ldim ldim"], Float[np.ndarray, "ldim"], "FactoredMatrix"
        ],
    ) -> Union["FactoredMatrix", Float[np.ndarray, "... rdim"]]:
        """``other @ self``: a FactoredMatrix for matrices, a plain array for vectors."""
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        other = np.asarray(other)
        if other.shape[-1:] != (self.ldim,):
            raise AssertionError(
                "Left matrix must match on inner dimension, "
                f"shapes were self: {self.shape}, other:{other.shape}"
            )
        if other.ndim < 2:
            # Collapse the factorisation: (v @ A) @ B, keeping leading dims.
            return ((other[..., None, :] @ self.A) @ self.B)[..., 0, :]
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: Union[int, float, complex, np.number, np.ndarray]) -> "FactoredMatrix":
        """Scalar multiplication; the scalar is folded into ``A``."""
        if isinstance(scalar, np.ndarray):
            if scalar.size != 1:
                raise AssertionError(
                    f"Array must be a scalar for use with * but was of shape {scalar.shape}. "
                    "For matrix multiplication, use @ instead."
                )
        elif not isinstance(scalar, (numbers.Number, np.generic)):
            return NotImplemented
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: Union[int, float, complex, np.number, np.ndarray]) -> "FactoredMatrix":
        """Scalar multiplication from the left; same as ``self * scalar``."""
        return self.__mul__(scalar)

    @property
    def AB(self) -> Float[np.ndarray, "*leading_dims ldim rdim"]:
        """The full product ``A @ B`` (can be large)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[np.ndarray, "*leading_dims mdim mdim"]:
        """The reversed product ``B @ A``; only defined when ``ldim == rdim``."""
        if self.rdim != self.ldim:
            raise AssertionError(f"Can only take ba if ldim==rdim, shapes were self: {self.shape}")
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        """The transpose, ``B.T @ A.T``, as a FactoredMatrix."""
        return FactoredMatrix(_swap_last(self.B), _swap_last(self.A))

    # ---------------------------------------------------------------- spectrum

    @cached_property
    def _svd_cached(
        self,
    ) -> Tuple[
        Float[np.ndarray, "*leading_dims ldim mdim"],
        Float[np.ndarray, "*leading_dims mdim"],
        Float[np.ndarray, "*leading_dims rdim mdim"],
    ]:
        # SVD each factor, then the small core between them:
        # A @ B = Ua (Sa Vha Ub Sb) Vhb = Ua (Um Sm Vhm) Vhb.
        Ua, Sa, Vha = np.linalg.svd(self.A, full_matrices=False)
        Ub, Sb, Vhb = np.linalg.svd(self.B, full_matrices=False)
        core = (Sa[..., :, None] * Vha) @ Ub * Sb[..., None, :]
        Um, Sm, Vhm = np.linalg.svd(core, full_matrices=False)
        return Ua @ Um, Sm, _swap_last(Vhb) @ _swap_last(Vhm)

    def svd(
        self,
    ) -> Tuple[
        Float[np.ndarray, "*leading_dims ldim mdim"],
        Float[np.ndarray, "*leading_dims mdim"],
        Float[np.ndarray, "*leading_dims rdim mdim"],
    ]:
        """Thin SVD ``(U, S, V)`` with ``U @ diag(S) @ V.swapaxes(-1, -2) == AB``.

        Note the third element is ``V`` (right singular vectors as columns),
        not ``Vh``, as in TransformerLens. The result is cached.
        """
        return self._svd_cached

    @property
    def U(self) -> Float[np.ndarray, "*leading_dims ldim mdim"]:
        """Left singular vectors (columns)."""
        return self.svd()[0]

    @property
    def S(self) -> Float[np.ndarray, "*leading_dims mdim"]:
        """Singular values, in descending order."""
        return self.svd()[1]

    @property
    def V(self) -> Float[np.ndarray, "*leading_dims rdim mdim"]:
        """Right singular vectors (columns): ``AB == U @ diag(S) @ V.swapaxes(-1, -2)``."""
        return self.svd()[2]

    @property
    def Vh(self) -> Float[np.ndarray, "*leading_dims rdim mdim"]:
        """Deprecated alias of :attr:`V` (returns V, not its transpose), as in TransformerLens."""
        warnings.warn(
            "FactoredMatrix.Vh has always returned V (right singular vectors), not Vh. "
            "Use .V for the canonical name; for the actual Hermitian transpose use "
            ".V.swapaxes(-1, -2). The .Vh alias will be removed in a future release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Complex[np.ndarray, "*leading_dims mdim"]:
        """Eigenvalues of ``AB``, computed from the smaller ``BA``.

        ``AB`` and ``BA`` share their non-zero eigenvalues (if ``BAv = kv`` then
        ``AB(Av) = k(Av)``). Always returns a complex array, like ``torch.linalg.eig``.
        """
        m = self.BA
        if m.dtype == np.float16:
            m = m.astype(np.float32)  # LAPACK has no half-precision eig
        vals = np.linalg.eigvals(m)
        return vals.astype(np.result_type(m.dtype, np.complex64), copy=False)

    def norm(self) -> Float[np.ndarray, "*leading_dims"]:
        """Frobenius norm: the root of the sum of squared singular values."""
        return np.sqrt(np.sum(self.S**2, axis=-1))

    # --------------------------------------------------------------- reshaping

    @staticmethod
    def _int_to_slice(idx: Tuple[Any, ...], pos: int) -> Tuple[Any, ...]:
        """Replace an integer at ``idx[pos]`` by a length-1 slice, so the axis is kept."""
        value = idx[pos]
        if not _is_int(value):
            return idx
        value = operator.index(value)
        # slice(-1, 0) would be empty, so the last element needs stop=None.
        piece = slice(value, value + 1 if value != -1 else None)
        out = list(idx)
        out[pos] = piece
        return tuple(out)

    def __getitem__(self, idx: Index) -> "FactoredMatrix":
        """Index the matrix (as TransformerLens does).

        An index no longer than the leading dims applies to both factors. One
        more entry also indexes the rows (``ldim``) through ``A``, and one more
        again the columns (``rdim``) through ``B``; an integer there is turned
        into a length-1 slice so the result stays a matrix. ``None`` entries
        are not counted. Longer indices raise ``ValueError``.
        """
        if not isinstance(idx, tuple):
            idx = (idx,)
        n = sum(1 for i in idx if i is not None)
        if n <= self.ndim - 2:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if n == self.ndim - 1:
            idx = self._int_to_slice(idx, -1)
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        if n == self.ndim:
            idx = self._int_to_slice(self._int_to_slice(idx, -1), -2)
            return FactoredMatrix(self.A[idx[:-1]], self.B[idx[:-2] + (slice(None), idx[-1])])
        raise ValueError(f"{idx} is too long an index for a FactoredMatrix with shape {self.shape}")

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"

    def make_even(self) -> "FactoredMatrix":
        """The balanced factorisation ``(U sqrt(S), sqrt(S) V^T)`` of the same matrix.

        Both halves carry the square root of the singular values and have
        orthogonal columns/rows; the hidden dim becomes the rank bound
        ``min(ldim, mdim, rdim)``.
        """
        root = np.sqrt(self.S)
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _swap_last(self.V))

    def get_corner(self, k: int = 3) -> Float[np.ndarray, "..."]:
        """The top-left ``k``-corner of every axis of ``AB``, computed cheaply."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[(slice(k),) * corner.ndim]

    @property
    def ndim(self) -> int:
        """Number of dimensions, leading dims included."""
        return len(self.shape)

    def collapse_l(self) -> Float[np.ndarray, "*leading_dims mdim rdim"]:
        """Drop the orthogonal left factor ``U``: returns ``diag(S) @ V^T``."""
        return self.S[..., :, None] * _swap_last(self.V)

    def collapse_r(self) -> Float[np.ndarray, "*leading_dims ldim mdim"]:
        """Drop the orthogonal right factor ``V^T``: returns ``U @ diag(S)``."""
        return self.U * self.S[..., None, :]

    def unsqueeze(self, k: int) -> "FactoredMatrix":
        """Insert a size-1 axis at position ``k`` of both factors."""
        return FactoredMatrix(np.expand_dims(self.A, k), np.expand_dims(self.B, k))

    @property
    def pair(
        self,
    ) -> Tuple[Float[np.ndarray, "*leading_dims ldim mdim"], Float[np.ndarray, "*leading_dims mdim rdim"]]:
        """The factors ``(A, B)``."""
        return (self.A, self.B)
