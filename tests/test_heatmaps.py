"""Heat maps coloured without matplotlib keep matplotlib's colours."""

import numpy as np
from PIL import Image

from anomaflow.model.operations.heatmaps import heatmap_image, heatmap_rgb, overlay_rgb
from anomaflow.model.operations.inspection import save_png_atomic


def test_lookup_table_colours_equal_matplotlib_jet_including_out_of_range_values():
    from matplotlib import colormaps

    rng = np.random.default_rng(0)
    m = (rng.random((120, 90)) * 1.6 - 0.2).astype(np.float32)  # below 0 and above vmax included
    m[0, :3] = [0.0, 1.0, 2.0]
    vmax = 1.3
    expected = (colormaps["jet"](np.clip(m / vmax, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)
    assert np.array_equal(heatmap_rgb(m, vmax), expected)


def test_palette_png_shows_the_same_pixels_as_the_rgb_heat_map(tmp_path):
    m = np.linspace(0, 2, 64 * 48, dtype=np.float32).reshape(64, 48)
    m[3, 3] = np.nan  # never a crash on a bad value: it takes the lowest colour
    path = tmp_path / "h.png"
    save_png_atomic(heatmap_image(m, 1.5), path)
    with Image.open(path) as img:
        assert img.mode == "P" and img.size == (48, 64)
        assert np.array_equal(np.asarray(img.convert("RGB")), heatmap_rgb(m, 1.5))
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]  # no temporary file left


def test_overlay_blends_within_one_level_of_the_float_formula():
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    m = rng.random((40, 30)).astype(np.float32)
    heat = heatmap_rgb(m, 1.0).astype(np.float32)
    exact = picture.astype(np.float32) * 0.55 + heat * 0.45
    assert np.abs(overlay_rgb(picture, m, 1.0).astype(np.float32) - exact).max() <= 1.0
