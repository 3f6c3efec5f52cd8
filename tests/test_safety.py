"""Safety: what loading a model may execute, where outputs may land.

- Checkpoints, memory banks, backbone weights and cache entries are data: a pickle payload in
  any of them is refused, and the payload is shown to be live (it runs under plain pickle).
- Batch inspection loads a registered model as data only (detector.json + tensors), so a
  registry writer cannot run code on the inspection host through it; `mlflow.pyfunc.load_model`
  runs the model's stored `served_model.py` (models-from-code), so it trusts registry writers.
  Both are demonstrated here, because the README's trust model rests on them.
- The pyfunc reads only its own artifacts (not the paths recorded at logging time, not the
  working directory), and unpickles nothing.
- Inspection outputs stay in the output folder whatever the input file names are.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaflow.model.data.datasets import ImageCache
from anomaflow.model.detectors.autoencoder import AutoencoderDetector
from anomaflow.model.detectors.registry import load_detector
from anomaflow.model.operations import inspection
from anomaflow.tasks import tracking
from tests.helpers import fit_tiny_autoencoder, inspect_inbox

SIZE = 64
NAME = "safety-model"


class Payload:
    """Unpickling this calls os.mkdir(marker): harmless, visible proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def detector(demo_root: Path) -> AutoencoderDetector:
    det = fit_tiny_autoencoder(demo_root, SIZE)
    det.threshold, det.pixel_threshold = 0.0, 0.05  # every image a DEFECT: figures for all
    return det


def poisoned_torch_file(path: Path, marker: Path, **tensors: torch.Tensor) -> Path:
    torch.save({**tensors, "extra": Payload(marker)}, path)
    return path


def assert_payload_is_live(path: Path, marker: Path) -> None:
    """The refusal means something only if the same file runs code when loaded unsafely."""
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.is_dir()


# ---------------------------------------------------------------------------------------------
# checkpoints, memory banks, backbone weights, cache entries


def test_checkpoint_with_pickle_payload_is_refused(detector: AutoencoderDetector, tmp_path: Path) -> None:
    model_dir = detector.save(tmp_path / "model")
    marker = tmp_path / "pwned"
    poisoned_torch_file(model_dir / "weights.pt", marker, **detector.net.state_dict())
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_detector(model_dir)
    assert not marker.exists()
    assert_payload_is_live(model_dir / "weights.pt", marker)


def test_detector_metadata_cannot_name_code(detector: AutoencoderDetector, tmp_path: Path) -> None:
    """detector.json picks a family from a closed table; it cannot point the loader at a module."""
    import json

    model_dir = detector.save(tmp_path / "model")
    meta = json.loads((model_dir / "detector.json").read_text())
    (model_dir / "detector.json").write_text(json.dumps({**meta, "family": "os.system"}))
    with pytest.raises(ValueError, match="unknown detector family 'os.system'"):
        load_detector(model_dir)


def test_memory_bank_and_backbone_weights_with_payload_are_refused(tmp_path: Path) -> None:
    patchcore = pytest.importorskip("anomaflow.model.detectors.patchcore")
    from anomaflow.model.detectors.backbone import read_state_dict

    marker = tmp_path / "pwned"
    bank_dir = tmp_path / "bank"
    bank_dir.mkdir()
    poisoned_torch_file(bank_dir / patchcore.BANK_FILE, marker, bank=torch.zeros(4, 8))
    # The bank is read before anything of the instance is used, so an unconfigured one suffices
    # (building a real PatchCore needs backbone weights this test does not depend on).
    bare = object.__new__(patchcore.PatchCoreDetector)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        bare._load_weights(bank_dir)
    backbone = poisoned_torch_file(tmp_path / "backbone.pth", marker, **{"conv.weight": torch.zeros(1)})
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        read_state_dict(backbone)
    assert not marker.exists()
    assert_payload_is_live(backbone, marker)


def test_image_cache_entry_with_pickle_payload_is_a_miss(tmp_path: Path) -> None:
    """A planted cache entry (object array) is never unpickled: it is treated as corrupt."""
    img = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(img)
    cache_dir = tmp_path / "cache"
    cache = ImageCache(cache_dir)
    marker = tmp_path / "pwned"
    entry = cache_dir / f"{cache._key('image', 8, img.read_bytes())}.npy"
    np.save(entry, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    out = cache.image(img, 8)
    assert (cache.hits, cache.misses) == (0, 1) and (out == 77).all()
    assert not marker.exists()
    np.load(entry, allow_pickle=True)  # the overwritten entry is clean now
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# a registered model: what loading reads and runs


@pytest.fixture(scope="module")
def registered(detector: AutoencoderDetector, mlflow_sqlite: str, demo_root: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    tracking.configure()
    client = MlflowClient()
    exp = tracking.ensure_experiment("safety")
    run_id = client.create_run(exp).info.run_id
    det = AutoencoderDetector.from_config(detector.config_dict())
    det.net.load_state_dict(detector.net.state_dict())
    det.threshold, det.pixel_threshold = 0.123, 0.05
    uri = tracking.log_model(run_id, det, example_image=sorted((demo_root / "demo" / "test" / "good").glob("*.png"))[0])
    version, _ = tracking.register(uri, NAME, run_id)
    tracking.finish_run(run_id)
    model_id = uri.split("/")[-1]
    stored = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    return {"version": version, "uri": f"models:/{NAME}/{version}", "stored": str(stored)}


class AuditLog:
    """Records file opens and pickle class lookups (sys.addaudithook cannot be removed: gated)."""

    active: list | None = None

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.active is not None and event in ("open", "pickle.find_class"):
            cls.active.append((event, args))


sys.addaudithook(AuditLog.hook)


def load_pyfunc_audited(uri: str):
    import mlflow

    AuditLog.active = events = []
    try:
        model = mlflow.pyfunc.load_model(uri)
    finally:
        AuditLog.active = None
    return model, events


def test_pyfunc_loads_only_its_own_artifacts_and_unpickles_nothing(
    registered: dict[str, str], detector: AutoencoderDetector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    # Decoys where a careless loader might look: the detector path recorded at logging time
    # (a deleted temp folder anyone could recreate) and the working directory.
    mlmodel = yaml.safe_load((Path(registered["stored"]) / "MLmodel").read_text())
    recorded = Path(mlmodel["flavors"]["python_function"]["artifacts"]["detector"]["uri"])
    assert not recorded.exists()
    decoy = AutoencoderDetector.from_config(detector.config_dict())
    decoy.threshold, decoy.pixel_threshold = 999.0, 1.0
    monkeypatch.chdir(tmp_path)
    decoy_dirs = [
        decoy.save(recorded),
        decoy.save(tmp_path / "detector"),
        decoy.save(tmp_path / "artifacts" / "detector"),
    ]
    try:
        model, events = load_pyfunc_audited(registered["uri"])
    finally:
        shutil.rmtree(recorded, ignore_errors=True)
    served = model.unwrap_python_model().detector
    assert served.threshold == pytest.approx(0.123)

    opened = [
        Path(str(args[0])) for event, args in events if event == "open" and isinstance(args[0], (str, os.PathLike))
    ]
    weights = [p for p in opened if p.name in ("weights.pt", "detector.json", "last.pt")]
    local_root = Path(model._model_impl.context.artifacts["detector"]).resolve()
    assert weights and all(p.resolve().is_relative_to(local_root) for p in weights), (weights, local_root)
    for d in decoy_dirs:
        assert not any(p.resolve().is_relative_to(d.resolve()) for p in opened), d
    assert [args for event, args in events if event == "pickle.find_class"] == []


def test_inspection_loads_registered_models_as_data_pyfunc_runs_their_code(
    registered: dict[str, str], tmp_path: Path
) -> None:
    """The trust boundary in the README: a registry writer who swaps the stored served_model.py
    gets code run by mlflow.pyfunc.load_model, not by batch inspection's loader."""
    import mlflow

    code = Path(registered["stored"]) / "served_model.py"
    repo_code = Path(tracking.__file__).with_name("served_model.py")
    assert code.read_bytes() == repo_code.read_bytes()  # what loading runs is this reviewed file
    original = code.read_text()
    marker = tmp_path / "pwned-by-registry"
    code.write_text(f"import os\nos.mkdir({str(marker)!r})\n" + original)
    try:
        det = tracking.load_registered_detector(NAME, registered["version"])
        assert det.threshold == pytest.approx(0.123) and not marker.exists()
        mlflow.pyfunc.load_model(registered["uri"])
        assert marker.is_dir()
    finally:
        code.write_text(original)


def test_registered_weights_with_payload_are_refused_by_inspection_loader(
    registered: dict[str, str], tmp_path: Path
) -> None:
    weights = Path(registered["stored"]) / "artifacts" / "detector" / "weights.pt"
    original = weights.read_bytes()
    marker = tmp_path / "pwned"
    state = torch.load(weights, weights_only=True)
    poisoned_torch_file(weights, marker, **state)
    try:
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            tracking.load_registered_detector(NAME, registered["version"])
        assert not marker.exists()
    finally:
        weights.write_bytes(original)


# ---------------------------------------------------------------------------------------------
# outputs stay in the output folder


HOSTILE = [
    "..png",
    "...png",
    "-rf.png",
    "$(touch PWNED).png",
    "`id`;x|y&.png",
    "a\nb.png",
    "ü 部品 ✓.png",
    " lead space.png",
    "defects.png",
    "results.csv.png",
    ".inspection.lock.png",
]


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_outputs_stay_in_the_output_folder(detector: AutoencoderDetector, demo_root: Path, tmp_path: Path) -> None:
    """Hostile names and nested folders in the inbox: results.csv records them verbatim, figures
    are named by content hash only, and nothing is created outside the output folder. Names
    starting with "." are ignored by design (uploaders such as rsync write partial files so)."""
    inbox = tmp_path / "inbox"
    sources = sorted((demo_root / "demo").rglob("*.png"))
    sources = [p for p in sources if "ground_truth" not in p.parts]
    names = [*HOSTILE, "sub/dir/..png", "defects/x.png", "-/x.png", "sub/ü $(id)/x.png"]
    assert len(sources) >= len(names)
    for src, name in zip(sources, names):
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, inbox / name)
    visible = [n for n in names if not any(part.startswith(".") for part in n.split("/"))]
    out = tmp_path / "out"
    outside_before = tree(tmp_path)
    summary = inspect_inbox(detector, inbox, out, threshold=0.0)
    assert summary.defect == len(visible) and len(visible) == len(names) - 4
    rows = inspection.read_results(out / "results.csv")
    assert sorted(r["path"] for r in rows) == sorted(visible)
    assert tree(tmp_path) - tree(out) == outside_before | {out}  # nothing new outside out/
    created = {p.relative_to(out).as_posix() for p in tree(out) if p.is_file()}
    figure = re.compile(r"^(defects/[0-9a-f]{16}_(heatmap\.png|overlay\.jpg)|views/[0-9a-f]{16}(_overlay)?\.jpg)$")
    assert {p for p in created if not figure.match(p)} == {"results.csv", ".inspection.lock"}
    assert len(created) == 2 + 4 * len({r["sha256"] for r in rows})  # figures and review copies, named by content
    assert not Path("PWNED").exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("planted", ["defects", "results.csv", ".inspection.lock"])
def test_links_planted_in_the_output_folder_are_refused(
    detector: AutoencoderDetector, demo_root: Path, tmp_path: Path, planted: str
) -> None:
    """A link planted in the output folder could send heat maps or rows elsewhere: the run refuses
    it before inspecting anything, names it, and writes nothing through it."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(sorted((demo_root / "demo" / "test").rglob("*.png"))[0], inbox / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere if planted == "defects" else elsewhere / "target"
    if planted != "defects":
        target.write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(target)
    with pytest.raises(OSError, match="link") as err:
        inspect_inbox(detector, inbox, out, threshold=0.0)
    assert err.value.filename == str(out / planted)
    assert sorted(p.name for p in elsewhere.iterdir()) == ([] if planted == "defects" else ["target"])
    assert planted == "defects" or target.read_bytes() == b""
