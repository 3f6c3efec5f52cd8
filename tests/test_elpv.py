"""The ELPV importer on a small generated stand-in of the package's data folder, and on the real
package when it is installed (the optional extra `anomaflow[elpv]`)."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from anomaflow.flows.cli import main
from anomaflow.model.data.datasets import DataError, scan_mvtec, validate_dataset
from anomaflow.model.data.elpv import import_elpv


def fake_source(tmp_path, n_good=10, n_bad=3, n_unsure=2):
    src = tmp_path / "elpv_data"
    (src / "images").mkdir(parents=True)
    lines, k = [], 0
    for kind in ("mono", "poly"):
        for prob, n in ((0.0, n_good), (1.0, n_bad), (1 / 3, n_unsure), (2 / 3, 1)):
            for _ in range(n):
                k += 1
                name = f"images/cell{k:04d}.png"
                Image.fromarray(np.full((30, 30), k % 256, np.uint8), "L").save(src / name)
                lines.append(f"{name}  {prob}  {kind}")
    (src / "labels.csv").write_text("\n".join(lines) + "\n")
    return src


def test_import_writes_mvtec_layout_with_a_seeded_split_and_leaves_uncertain_cells_out(tmp_path, capsys):
    src = fake_source(tmp_path)
    dest = tmp_path / "data"
    assert main(["import-elpv", str(dest), "--source", str(src), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "elpv_mono: train/good 8, test/good 2, test/defective 3 (seed 3); left out 3 cells" in out
    for kind in ("mono", "poly"):
        ds = scan_mvtec(dest, f"elpv_{kind}")
        assert (len(ds.train), ds.defect_types, ds.unmasked_types) == (8, ["defective"], ["defective"])
        assert validate_dataset(ds).ok  # no masks: image-level labels only, a valid dataset
        info = json.loads((dest / f"elpv_{kind}" / "elpv_import.json").read_text())
        assert info["left_out_uncertain"] == 3 and len(info["left_out_cells"]) == 3
    train = {p.name for p in (dest / "elpv_mono" / "train" / "good").iterdir()}
    assert train.isdisjoint(p.name for p in (dest / "elpv_mono" / "test" / "good").iterdir())
    # Importing again with the same seed changes nothing; another seed is refused, nothing touched.
    assert main(["import-elpv", str(dest), "--source", str(src), "--seed", "3"]) == 0
    assert {p.name for p in (dest / "elpv_mono" / "train" / "good").iterdir()} == train
    with pytest.raises(FileExistsError, match="seed 4"):
        import_elpv(dest, seed=4, source=src)
    import_elpv(tmp_path / "other", seed=4, source=src)
    assert {
        p.name for p in (tmp_path / "other" / "elpv_mono" / "train" / "good").iterdir()
    } != train  # the seed moves the split


def test_missing_image_leaves_no_half_dataset(tmp_path):
    src = fake_source(tmp_path)
    (src / "images" / "cell0002.png").unlink()
    with pytest.raises(DataError, match="not found"):
        import_elpv(tmp_path / "data", source=src)
    assert [p.name for p in (tmp_path / "data").iterdir()] == []


@pytest.mark.skipif(
    importlib.util.find_spec("elpv_dataset") is None, reason="optional extra anomaflow[elpv] not installed"
)
def test_import_from_the_installed_package(tmp_path):
    infos = {i.category: i for i in import_elpv(tmp_path)}
    # The package's labels: mono 588 good / 313 defective / 173 uncertain; poly 920 / 402 / 228.
    assert (infos["elpv_mono"].train_good + infos["elpv_mono"].test_good, infos["elpv_mono"].test_defective) == (
        588,
        313,
    )
    assert (infos["elpv_poly"].train_good + infos["elpv_poly"].test_good, infos["elpv_poly"].test_defective) == (
        920,
        402,
    )
    assert infos["elpv_mono"].left_out_uncertain == 173 and infos["elpv_poly"].left_out_uncertain == 228
    with Image.open(next((tmp_path / "elpv_mono" / "train" / "good").iterdir())) as img:
        assert img.size == (300, 300) and img.mode == "L"
