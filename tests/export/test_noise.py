"""The runtime's numpy noise is JAX's: the same numbers a JAX Policy samples from for the same seed and call."""

from __future__ import annotations

import numpy as np
import pytest

from pi0cli.runtime.noise import policy_noise


@pytest.mark.parametrize(("seed", "counter", "shape"), [(0, 0, (1, 10, 32)), (3, 7, (4, 50, 32)), (12345, 99, (2, 5))])
def test_policy_noise_is_jax_random_normal(seed, counter, shape):
    import jax

    expected = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(seed), counter), shape))
    got = policy_noise(seed, counter, shape)
    assert got.dtype == np.float32 and got.shape == shape
    # Bits and uniforms are exact; erfinv is a float32 polynomial. Near 0 it is an ulp or two from XLA's; in the
    # tails (|x| > 3) XLA's own polynomial differs between host CPUs by up to ~5e-6 relative (seen on CI).
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


def test_first_rows_do_not_depend_on_the_batch_size():
    """Padding a request to a larger graph batch keeps its noise: the layout counts elements linearly."""
    np.testing.assert_array_equal(policy_noise(0, 5, (4, 10, 32))[:1], policy_noise(0, 5, (1, 10, 32)))
