"""graphlens.analysis.FactoredMatrix against TransformerLens 3.9's torch FactoredMatrix.

Every test builds the same random factors for both implementations and compares
real values. Singular vectors are only defined up to sign, so SVD-derived
quantities are compared after aligning each singular direction's sign.
"""

import warnings

import numpy as np
import pytest

from graphlens.analysis import FactoredMatrix

torch = pytest.importorskip("torch")
tl_mod = pytest.importorskip("transformer_lens.FactoredMatrix")
TLFactoredMatrix = tl_mod.FactoredMatrix

RTOL = 1e-5


def rand(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def n(x):
    return x.detach().numpy()


def close(ours, theirs, rtol=RTOL):
    """Relative comparison; the absolute floor scales with the reference's magnitude."""
    theirs = n(theirs) if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = max(1.0, float(np.abs(theirs).max())) if theirs.size else 1.0
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale)


def pair(rng, a_shape, b_shape, dtype=np.float64):
    a, b = rand(rng, *a_shape, dtype=dtype), rand(rng, *b_shape, dtype=dtype)
    return FactoredMatrix(a, b), TLFactoredMatrix(t(a), t(b))


def same_fm(ours, theirs, rtol=RTOL):
    """Same shape metadata, same factors, same product."""
    assert isinstance(ours, FactoredMatrix)
    assert ours.shape == tuple(theirs.shape)
    assert (ours.ldim, ours.mdim, ours.rdim) == (theirs.ldim, theirs.mdim, theirs.rdim)
    assert ours.ndim == theirs.ndim
    assert ours.has_leading_dims == theirs.has_leading_dims
    close(ours.A, theirs.A, rtol)
    close(ours.B, theirs.B, rtol)
    close(ours.AB, theirs.AB, rtol)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# (A shape, B shape): plain, mdim > ldim/rdim, square, and leading-dim broadcasting.
SHAPES = [
    ((5, 4), (4, 6)),
    ((3, 7), (7, 4)),  # mdim > ldim, rdim: low-rank core
    ((6, 3), (3, 6)),  # square, rank-deficient
    ((2, 3, 5, 4), (4, 6)),  # B broadcast over A's leading dims
    ((5, 4), (2, 4, 6)),  # A broadcast over B's leading dim
    ((2, 1, 5, 4), (3, 4, 6)),  # both broadcast
    ((3, 4, 4), (2, 1, 4, 4)),
]


@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
def test_construction_and_basic_properties(rng, a_shape, b_shape):
    ours, theirs = pair(rng, a_shape, b_shape)
    same_fm(ours, theirs)
    close(ours.pair[0], theirs.pair[0])
    close(ours.pair[1], theirs.pair[1])
    same_fm(ours.T, theirs.T)
    assert repr(ours) == f"FactoredMatrix: Shape({tuple(theirs.shape)}), Hidden Dim({theirs.mdim})"
    if ours.ldim == ours.rdim:
        close(ours.BA, theirs.BA)


def test_construction_keeps_unbroadcast_factor(rng):
    a, b = rand(rng, 5, 4), rand(rng, 2, 4, 6)
    fm = FactoredMatrix(a, b)
    assert fm.B is b  # no broadcast needed: no copy, no view
    assert fm.A.shape == (2, 5, 4) and np.shares_memory(fm.A, a)


@pytest.mark.parametrize(
    "a_shape,b_shape,other_shape",
    [
        ((5, 4), (4, 6), (6, 3)),  # rdim > mdim: keeps A, folds other into B
        ((5, 7), (7, 3), (3, 2)),  # rdim <= mdim: collapses to (AB, other)
        ((2, 5, 4), (4, 6), (6, 3)),
        ((5, 4), (4, 6), (3, 6, 2)),  # other brings leading dims
        ((2, 1, 5, 4), (3, 4, 6), (6, 6)),
    ],
)
def test_matmul_right_matrix(rng, a_shape, b_shape, other_shape):
    ours, theirs = pair(rng, a_shape, b_shape)
    other = rand(rng, *other_shape)
    same_fm(ours @ other, theirs @ t(other))
    same_fm(ours.__matmul__(other), theirs.__matmul__(t(other)))


@pytest.mark.parametrize(
    "a_shape,b_shape,other_shape",
    [
        ((6, 4), (4, 5), (3, 6)),  # ldim > mdim: folds other into A
        ((3, 7), (7, 5), (2, 3)),  # ldim <= mdim: collapses to (other, AB)
        ((2, 6, 4), (4, 5), (3, 6)),
        ((6, 4), (4, 5), (2, 3, 6)),
    ],
)
def test_matmul_left_matrix(rng, a_shape, b_shape, other_shape):
    ours, theirs = pair(rng, a_shape, b_shape)
    other = rand(rng, *other_shape)
    result = other @ ours  # numpy must defer to FactoredMatrix.__rmatmul__
    same_fm(result, t(other) @ theirs)
    same_fm(ours.__rmatmul__(other), theirs.__rmatmul__(t(other)))


@pytest.mark.parametrize("a_shape,b_shape", [((5, 4), (4, 6)), ((2, 3, 5, 4), (4, 6))])
def test_matmul_vectors(rng, a_shape, b_shape):
    ours, theirs = pair(rng, a_shape, b_shape)
    right, left = rand(rng, 6), rand(rng, 5)
    r_ours, l_ours = ours @ right, left @ ours
    assert isinstance(r_ours, np.ndarray) and isinstance(l_ours, np.ndarray)
    close(r_ours, theirs @ t(right))
    close(l_ours, t(left) @ theirs)
    close(r_ours, ours.AB @ right)
    close(l_ours, left @ ours.AB)


def test_matmul_factored_both_sides(rng):
    f1, g1 = pair(rng, (5, 4), (4, 6))
    f2, g2 = pair(rng, (6, 3), (3, 7))
    f3, g3 = pair(rng, (2, 7, 8), (8, 5))  # mdim > ldim, leading dims
    same_fm(f1 @ f2, g1 @ g2)
    same_fm(f2 @ f3, g2 @ g3)
    same_fm((f1 @ f2) @ f3, (g1 @ g2) @ g3)
    same_fm(f1 @ (f2 @ f3), g1 @ (g2 @ g3))
    same_fm(f2.__rmatmul__(f1), g2.__rmatmul__(g1))
    close((f1 @ f2).AB, f1.AB @ f2.AB)


@pytest.mark.parametrize(
    "scalar",
    [2.5, -3, np.float64(0.5), np.array(1.5), np.array([[[-2.0]]])],
    ids=["float", "int", "np_scalar", "0d", "size1_3d"],
)
def test_scalar_multiplication(rng, scalar):
    ours, theirs = pair(rng, (2, 5, 4), (4, 6))
    t_scalar = t(scalar) if isinstance(scalar, np.ndarray) else float(scalar)
    same_fm(ours * scalar, theirs * t_scalar)
    same_fm(scalar * ours, t_scalar * theirs)


def test_scalar_multiplication_rejects_arrays(rng):
    ours, theirs = pair(rng, (5, 4), (4, 6))
    with pytest.raises(AssertionError):
        theirs * torch.ones(2)
    with pytest.raises(AssertionError):
        ours * np.ones(2)
    with pytest.raises(AssertionError):
        np.ones(2) * ours
    with pytest.raises(TypeError):
        ours * "x"


def _align(ours_u, theirs_u):
    """Per-singular-vector sign (+-1) mapping our U columns onto TL's."""
    return np.sign(np.sum(ours_u * n(theirs_u), axis=-2, keepdims=True))


@pytest.mark.parametrize("a_shape,b_shape", SHAPES[:2] + SHAPES[3:])
def test_svd(rng, a_shape, b_shape):
    ours, theirs = pair(rng, a_shape, b_shape)
    U, S, V = ours.svd()
    tU, tS, tV = theirs.svd()
    k = min(ours.ldim, ours.mdim, ours.rdim)
    assert U.shape == tuple(tU.shape) and U.shape[-1] == k
    assert V.shape == tuple(tV.shape) and V.shape[-2] == ours.rdim
    close(S, tS)
    assert np.all(np.diff(S, axis=-1) <= 0)
    # Reconstruction: svd() returns V (not Vh), as TL does.
    close((U * S[..., None, :]) @ np.swapaxes(V, -1, -2), theirs.AB)
    sign = _align(U, tU)
    assert np.all(sign != 0)
    close(U * sign, tU)
    close(V * sign, tV)
    close(np.abs(U), np.abs(n(tU)))
    close(ours.U, tU.numpy() * sign)
    close(ours.S, tS)
    close(ours.V * sign, tV)
    assert ours.svd() is ours.svd()  # cached


def test_vh_is_deprecated_alias_of_v(rng):
    ours, theirs = pair(rng, (5, 4), (4, 6))
    with pytest.warns(DeprecationWarning):
        vh = ours.Vh
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        t_vh = theirs.Vh
    np.testing.assert_array_equal(vh, ours.V)
    close(vh * _align(ours.U, theirs.U), t_vh)


def test_svd_rank_deficient_square(rng):
    # ldim == rdim > mdim: the product has rank mdim; SVD only returns those.
    ours, theirs = pair(rng, (6, 3), (3, 6))
    U, S, V = ours.svd()
    assert S.shape == (3,)
    close(S, theirs.S)
    close((U * S) @ V.T, theirs.AB)
    close(S, np.linalg.svd(ours.AB, compute_uv=False)[:3])


@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
def test_norm(rng, a_shape, b_shape):
    ours, theirs = pair(rng, a_shape, b_shape)
    close(ours.norm(), theirs.norm())
    close(ours.norm(), np.linalg.norm(ours.AB, axis=(-2, -1)))


def _match_multiset(ours, theirs, tol):
    """Greedy nearest matching of two eigenvalue lists (order is not defined)."""
    theirs = list(theirs)
    for value in ours:
        dists = [abs(value - x) for x in theirs]
        j = int(np.argmin(dists))
        assert dists[j] <= tol * max(1.0, abs(theirs[j])), (value, theirs)
        theirs.pop(j)


@pytest.mark.parametrize(
    "a_shape,b_shape", [((6, 4), (4, 6)), ((4, 7), (7, 4)), ((2, 3, 5, 5), (5, 5))]
)
def test_eigenvalues(rng, a_shape, b_shape):
    ours, theirs = pair(rng, a_shape, b_shape)
    ev, tev = ours.eigenvalues, n(theirs.eigenvalues)
    assert ev.dtype == np.complex128 and ev.dtype == tev.dtype
    assert ev.shape == tev.shape
    for e, te in zip(ev.reshape(-1, ev.shape[-1]), tev.reshape(-1, tev.shape[-1])):
        _match_multiset(e, te, RTOL)
    # Non-zero eigenvalues of AB are those of BA (the mdim <= ldim case).
    if ours.mdim <= ours.ldim and not ours.has_leading_dims:
        full = np.linalg.eigvals(ours.AB)
        largest = full[np.argsort(-np.abs(full))][: ours.mdim]
        _match_multiset(ev, largest, 1e-6)


def test_eigenvalues_real_spectrum_still_complex(rng):
    # X X^T has a real spectrum; numpy's eigvals would return float64, TL complex.
    x = rand(rng, 6, 4)
    ours, theirs = FactoredMatrix(x, x.T), TLFactoredMatrix(t(x), t(x.T))
    ev, tev = ours.eigenvalues, n(theirs.eigenvalues)
    assert ev.dtype == tev.dtype == np.complex128
    _match_multiset(ev, tev, RTOL)
    close(np.sort(ev.real), np.linalg.svd(x, compute_uv=False)[::-1] ** 2)


@pytest.mark.parametrize("k", [3, 2, 10])
@pytest.mark.parametrize("a_shape,b_shape", [((5, 4), (4, 6)), ((2, 3, 5, 4), (4, 6))])
def test_get_corner(rng, a_shape, b_shape, k):
    ours, theirs = pair(rng, a_shape, b_shape)
    close(ours.get_corner(k), theirs.get_corner(k))
    if k == 3:
        close(ours.get_corner(), theirs.get_corner())


@pytest.mark.parametrize("a_shape,b_shape", [((5, 4), (4, 6)), ((3, 7), (7, 4)), ((2, 3, 5, 4), (4, 6))])
def test_collapse_and_make_even(rng, a_shape, b_shape):
    ours, theirs = pair(rng, a_shape, b_shape)
    sign = _align(ours.U, theirs.U)  # [..., 1, k]
    row_sign = np.swapaxes(sign, -1, -2)  # [..., k, 1]
    cl, cr = ours.collapse_l(), ours.collapse_r()
    close(cl * row_sign, theirs.collapse_l())
    close(cr * sign, theirs.collapse_r())
    close(ours.U @ cl, theirs.AB)
    close(cr @ np.swapaxes(ours.V, -1, -2), theirs.AB)

    even, t_even = ours.make_even(), theirs.make_even()
    assert even.shape == tuple(t_even.shape) and even.mdim == t_even.mdim
    close(even.A * sign, t_even.A)
    close(even.B * row_sign, t_even.B)
    close(even.AB, theirs.AB)
    # Balanced: both halves carry sqrt(S).
    close(np.linalg.norm(even.A, axis=-2), np.sqrt(n(theirs.S)))
    close(np.linalg.norm(even.B, axis=-1), np.sqrt(n(theirs.S)))


@pytest.mark.parametrize("k", [0, 1, -3, -4])
def test_unsqueeze(rng, k):
    ours, theirs = pair(rng, (2, 5, 4), (4, 6))
    same_fm(ours.unsqueeze(k), theirs.unsqueeze(k))


@pytest.mark.parametrize("k", [2, -1, -2])
def test_unsqueeze_into_matrix_dims_fails_like_tl(rng, k):
    # Inserting an axis among the last two splits the factors' inner dims.
    ours, theirs = pair(rng, (2, 5, 4), (4, 6))
    with pytest.raises(AssertionError):
        theirs.unsqueeze(k)
    with pytest.raises(AssertionError):
        ours.unsqueeze(k)


INDICES = [
    0,
    -1,
    (1,),
    slice(0, 1),
    [1, 0],
    (1, 2),
    (slice(None), -1),
    (None, 0),
    (0, 1, 2),  # also indexes ldim (kept as a length-1 axis)
    (0, 1, -1),
    (0, 1, slice(1, 4)),
    (slice(None), slice(None), [0, 2]),
    (0, 1, 2, 3),  # also indexes rdim
    (0, 1, -1, -1),
    (1, -2, slice(None), slice(2, 5)),
    (slice(None), 0, 3, -1),
]


@pytest.mark.parametrize("idx", INDICES, ids=[repr(i) for i in INDICES])
def test_getitem(rng, idx):
    ours, theirs = pair(rng, (2, 3, 5, 4), (4, 6))
    same_fm(ours[idx], theirs[idx])


def test_getitem_numpy_integers_act_like_ints(rng):
    ours, _ = pair(rng, (2, 3, 5, 4), (4, 6))
    a = ours[np.int64(1), np.int32(2), np.int64(-1), np.int64(3)]
    b = ours[1, 2, -1, 3]
    assert a.shape == b.shape == (1, 1)
    close(a.AB, b.AB)
    close(a.AB, ours.AB[1, 2, -1:, 3:4])


def test_getitem_too_long(rng):
    ours, theirs = pair(rng, (2, 5, 4), (4, 6))
    with pytest.raises(ValueError):
        theirs[0, 1, 2, 3]
    with pytest.raises(ValueError):
        ours[0, 1, 2, 3]


def test_shape_errors_match_tl(rng):
    a, b = rand(rng, 5, 4), rand(rng, 3, 6)
    with pytest.raises(AssertionError):
        TLFactoredMatrix(t(a), t(b))
    with pytest.raises(AssertionError):
        FactoredMatrix(a, b)

    a, b = rand(rng, 2, 5, 4), rand(rng, 3, 4, 6)
    with pytest.raises(RuntimeError):
        TLFactoredMatrix(t(a), t(b))
    with pytest.raises(RuntimeError):
        FactoredMatrix(a, b)

    with pytest.raises(IndexError):
        TLFactoredMatrix(t(rand(rng, 4)), t(rand(rng, 4)))
    with pytest.raises(IndexError):
        FactoredMatrix(rand(rng, 4), rand(rng, 4))

    ours, theirs = pair(rng, (5, 4), (4, 6))
    for bad in [rand(rng, 5, 3), rand(rng, 2, 5, 3)]:  # right matrix, wrong rows
        with pytest.raises(AssertionError):
            theirs @ t(bad)
        with pytest.raises(AssertionError):
            ours @ bad
    for bad in [rand(rng, 3, 6), rand(rng, 6)]:  # left matrix/vector, wrong cols
        with pytest.raises(AssertionError):
            t(bad) @ theirs
        with pytest.raises(AssertionError):
            bad @ ours
    with pytest.raises(AssertionError):
        theirs.BA
    with pytest.raises(AssertionError):
        ours.BA
    # FM @ FM with mismatched inner dims.
    other, t_other = pair(rng, (5, 2), (2, 3))
    with pytest.raises(AssertionError):
        theirs @ t_other
    with pytest.raises(AssertionError):
        ours @ other


def test_right_vector_wrong_length(rng):
    # TL lets torch raise RuntimeError here; we check up front (AssertionError,
    # like every other inner-dimension mismatch).
    ours, theirs = pair(rng, (5, 4), (4, 6))
    with pytest.raises(RuntimeError):
        theirs @ t(rand(rng, 5))
    with pytest.raises(AssertionError):
        ours @ rand(rng, 5)


def test_float32(rng):
    ours, theirs = pair(rng, (2, 6, 4), (4, 6), dtype=np.float32)
    rtol = 1e-5
    assert ours.AB.dtype == np.float32
    same_fm(ours, theirs, rtol)
    same_fm(ours * 2.0, theirs * 2.0, rtol)
    same_fm(ours.T @ ours, theirs.T @ theirs, rtol)
    vec = rand(rng, 6, dtype=np.float32)
    close(ours @ vec, theirs @ t(vec), rtol)
    U, S, V = ours.svd()
    assert U.dtype == S.dtype == V.dtype == np.float32
    close(S, theirs.S, rtol)
    close(U * _align(U, theirs.U), theirs.U, 1e-4)  # vectors are less well conditioned
    close(ours.norm(), theirs.norm(), rtol)
    assert ours.norm().dtype == np.float32
    ev = ours.eigenvalues
    assert ev.dtype == np.complex64 == n(theirs.eigenvalues).dtype
    for e, te in zip(ev, n(theirs.eigenvalues)):
        _match_multiset(e, te, 1e-4)
    close(ours.make_even().AB, theirs.AB, 1e-4)


def test_no_torch_import_in_module():
    import ast
    import inspect

    import graphlens.analysis.factored_matrix as mod

    tree = ast.parse(inspect.getsource(mod))
    names = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ] + [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not any(name and name.split(".")[0] == "torch" for name in names)
