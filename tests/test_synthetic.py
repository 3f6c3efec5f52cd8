import numpy as np
import pytest

from anomaflow.model.data.synthetic import KINDS, SUBTLE_KINDS, add_synthetic_defect, synthetic_set


@pytest.mark.parametrize("kind", KINDS + SUBTLE_KINDS)
def test_synthetic_defect_mask_is_exact(kind):
    rng = np.random.default_rng(0)
    img = (np.random.default_rng(1).random((96, 96, 3)) * 60 + 100).astype(np.uint8)
    out, mask = add_synthetic_defect(img, kind, rng)
    assert mask.any() and mask.dtype == bool
    np.testing.assert_array_equal(out[~mask], img[~mask])  # nothing changes outside the mask
    assert np.all(np.any(out[mask] != img[mask], axis=-1))  # every masked pixel changed


def test_synthetic_set_is_deterministic():
    normals = (np.random.default_rng(2).random((6, 64, 64, 3)) * 255).astype(np.uint8)
    a = synthetic_set(normals, seed=3)
    b = synthetic_set(normals, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2] and set(a[2]) == set(KINDS)
    with pytest.raises(ValueError, match="unknown synthetic"):
        add_synthetic_defect(normals[0], "nope", np.random.default_rng(0))
