"""tools/infer.py mode=scene: TIFF in, tiled compressed TIFF out, equal to in-memory slide inference; a rerun
skips, another run's output is refused, a disk without room is refused before starting, and a run killed with
kill -9 resumes with a byte-identical result. Run as a script, this file is the slowed run that the test kills."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from segdense.config.infer_job import infer_job
from segdense.errors import UserError
from segdense.inference import Predictor, load_bundle

from infer_fixtures import tiny_checkpoint  # noqa: F401 (a fixture)
from test_infer import compose_infer
from test_sharded_tools import TIMEOUT_S, WORLD, varied_checkpoint
from train_utils import free_port, spawn_within

ROOT = Path(__file__).resolve().parents[1]
SCENE = ["mode=scene", "crop_size=[48,48]", "stride=[32,32]", "batch_size=3", "progress=false", "device=cpu"]


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path):  # noqa: F811
    """The tiny checkpoint with perturbed weights: it predicts several classes, so equal labels mean something."""
    return varied_checkpoint(tiny_checkpoint, tmp_path / "varied.pt")


def write_scene(path: Path, height: int = 170, width: int = 130) -> np.ndarray:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, photometric="rgb", tile=(32, 32), compression="zlib")
    return image


def scene_overrides(checkpoint, scene: Path, out: Path, *extra) -> list[str]:
    return [f"checkpoint={checkpoint}", f"input={scene}", f"output={out}", *SCENE, *extra]


def test_scene_output_is_a_tiled_compressed_tiff_equal_to_in_memory_slide_inference(checkpoint, tmp_path):
    image = write_scene(tmp_path / "scene.tif")
    report = infer_job(compose_infer(scene_overrides(checkpoint, tmp_path / "scene.tif", tmp_path / "out",
                                                     "save_proba=true")))
    assert report.written == [tmp_path / "scene.tif"] and report.ok
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene.tif", "scene_proba.tif"]
    predictor = Predictor(load_bundle(checkpoint), device="cpu", mode="slide", crop_size=[48, 48],
                          stride=[32, 32], blend="gaussian", batch_size=3)
    expected = predictor.logits_batch([image])[0]
    with tifffile.TiffFile(tmp_path / "out" / "scene.tif") as tiff:
        page = tiff.pages.first
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and tiff.is_bigtiff
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        labels = page.asarray()
    assert np.array_equal(labels, expected.argmax(0).numpy()) and len(np.unique(labels)) > 1
    proba = tifffile.imread(tmp_path / "out" / "scene_proba.tif")
    np.testing.assert_allclose(proba, expected.softmax(0).permute(1, 2, 0).numpy(), rtol=0, atol=1e-5)


def test_rerun_skips_and_another_runs_output_is_refused(checkpoint, tmp_path):
    write_scene(tmp_path / "scene.tif")
    overrides = scene_overrides(checkpoint, tmp_path / "scene.tif", tmp_path / "out")
    infer_job(compose_infer(overrides))
    before = (tmp_path / "out" / "scene.tif").read_bytes()
    assert infer_job(compose_infer(overrides)).skipped == [tmp_path / "scene.tif"]
    with pytest.raises(UserError, match=r"scene.tif already exists and is not this run's output.*overwrite=true"):
        infer_job(compose_infer(overrides + ["stride=[40,40]"]))
    assert (tmp_path / "out" / "scene.tif").read_bytes() == before
    assert infer_job(compose_infer(overrides + ["stride=[40,40]", "overwrite=true"])).written


def test_a_scene_that_would_not_fit_on_disk_is_refused_before_starting(checkpoint, tmp_path, monkeypatch):
    import shutil

    write_scene(tmp_path / "scene.tif")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"a 170x130 scene needs up to 0.00 GB .* has 0.00 GB free"):
        infer_job(compose_infer(scene_overrides(checkpoint, tmp_path / "scene.tif", tmp_path / "out")))
    assert not list((tmp_path / "out").iterdir())  # nothing started


def test_mode_scene_refuses_a_file_that_is_no_tiff(checkpoint, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match=r"mode=scene reads TIFF files window by window; not a .tif/.tiff: .*a.png"):
        infer_job(compose_infer(scene_overrides(checkpoint, tmp_path / "a.png", tmp_path / "out")))


def slowed_run(overrides: list[str]) -> None:
    """The tool's job with every batch of windows slowed down, so that a kill lands in the middle of the run."""
    original = Predictor.logits_batch

    def slow(self, images):
        time.sleep(0.15)
        return original(self, images)

    Predictor.logits_batch = slow
    infer_job(compose_infer(overrides))


@pytest.mark.slow
def test_a_run_killed_with_kill_9_resumes_byte_identical(checkpoint, tmp_path):
    write_scene(tmp_path / "scene.tif", 330, 100)  # 10 bands of 4 windows
    whole = scene_overrides(checkpoint, tmp_path / "scene.tif", tmp_path / "whole", "save_proba=true")
    infer_job(compose_infer(whole))
    killed = scene_overrides(checkpoint, tmp_path / "scene.tif", tmp_path / "killed", "save_proba=true")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, __file__, json.dumps(killed)], env=env, cwd=ROOT,
                            start_new_session=True)
    parts = tmp_path / "killed" / ".scene.tif.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("band_*.labels.npy"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the slowed run ended before it was killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (tmp_path / "killed" / "scene.tif").exists()  # nothing under the final name
    finished = len(list(parts.glob("band_*.labels.npy")))
    assert 3 <= finished < 10
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "infer.py"), *killed], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming, {finished} of 10 bands already done" in result.stdout + result.stderr
    for name in ("scene.tif", "scene_proba.tif"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["scene.tif", "scene_proba.tif"]


def sharded_worker(rank: int, port: int, overrides: list[str]) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from segdense.engine.distributed import cleanup_distributed

    try:
        infer_job(compose_infer(overrides))
    finally:
        cleanup_distributed()


@pytest.mark.slow
def test_two_processes_share_the_bands_and_write_one_processs_files(checkpoint, tmp_path, caplog):
    write_scene(tmp_path / "scene.tif", 250, 90)  # 8 bands: 4 per rank (rank 1 adds a row of windows before its own)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: the same kernels, bit for bit
    try:
        infer_job(compose_infer(scene_overrides(checkpoint, tmp_path / "scene.tif", tmp_path / "one",
                                                "save_proba=true")))
    finally:
        torch.set_num_threads(threads)
    spawn_within(sharded_worker, (free_port(), scene_overrides(checkpoint, tmp_path / "scene.tif", tmp_path / "two",
                                                               "save_proba=true")), WORLD, TIMEOUT_S)
    for name in ("scene.tif", "scene_proba.tif"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["scene.tif", "scene_proba.tif"]


def test_each_process_gets_one_contiguous_run_of_bands():
    from segdense.inference.scene import scene_grid
    from segdense.inference.scene_run import SceneJob

    job = SceneJob(None, scene_grid(250, 90, (48, 48), (32, 32), "gaussian"), None)
    assert job.grid.num_bands == 8
    assert [job.share(rank, 2) for rank in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [job.share(rank, 3) for rank in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [job.share(rank, 10) for rank in range(10)] == [[k] for k in range(8)] + [[], []]


if __name__ == "__main__":
    torch.set_num_threads(1)
    slowed_run(json.loads(sys.argv[1]))


def export_onnx(checkpoint: Path, output: Path, *int8: str) -> Path:
    """The checkpoint exported as ONNX: float32, or INT8 with the INT8 options (calibrated, guard left open)."""
    from segdense.config.export_job import export_job

    from test_export import compose_export

    export_job(compose_export([f"checkpoint={checkpoint}", f"output={output}", "format=onnx", "verify_images=0",
                               *int8]))
    return output


def scene_result(checkpoint, scene: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    infer_job(compose_infer(scene_overrides(checkpoint, scene, out, "save_proba=true")))
    return tifffile.imread(out / "scene.tif"), tifffile.imread(out / "scene_proba.tif")


def test_float_onnx_export_predicts_the_scene_as_its_checkpoint(checkpoint, tmp_path):
    write_scene(tmp_path / "scene.tif")
    labels, proba = scene_result(checkpoint, tmp_path / "scene.tif", tmp_path / "pt")
    exported = export_onnx(checkpoint, tmp_path / "float.onnx")
    onnx_labels, onnx_proba = scene_result(exported, tmp_path / "scene.tif", tmp_path / "onnx")
    assert np.array_equal(onnx_labels, labels) and len(np.unique(labels)) > 1
    np.testing.assert_allclose(onnx_proba, proba, rtol=0, atol=1e-5)


def test_int8_onnx_scene_equals_in_memory_slide_inference_of_the_same_file(checkpoint, tmp_path):
    image = write_scene(tmp_path / "scene.tif")
    exported = export_onnx(checkpoint, tmp_path / "int8.onnx", "quantize=int8", "calibration=2", "eval_images=2",
                           "max_miou_drop=100")
    labels, proba = scene_result(exported, tmp_path / "scene.tif", tmp_path / "int8")
    predictor = Predictor(load_bundle(exported), device="cpu", mode="slide", crop_size=[48, 48],
                          stride=[32, 32], blend="gaussian", batch_size=3)
    assert predictor.model.precision == "int8"
    expected = predictor.logits_batch([image])[0]
    assert np.array_equal(labels, expected.argmax(0).numpy()) and len(np.unique(labels)) > 1
    np.testing.assert_allclose(proba, expected.softmax(0).permute(1, 2, 0).numpy(), rtol=0, atol=1e-5)
    torch_labels, _ = scene_result(checkpoint, tmp_path / "scene.tif", tmp_path / "pt")
    assert np.mean(labels == torch_labels) > 0.5  # mostly the float model's classes (5 classes, noise input)


def test_a_4_band_16_bit_scene_equals_in_memory_slide_inference_with_the_datasets_normalisation(tmp_path):
    from segdense.config.train_job import train

    from test_bands_end_to_end import folder_overrides, write_folder
    from train_utils import compose_config

    train(compose_config(folder_overrides(write_folder(tmp_path / "data"))), run_dir=tmp_path / "run")
    torch.use_deterministic_algorithms(False)
    model = varied_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "varied.pt")
    image = np.random.default_rng(4).integers(0, 4000, (150, 110, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "scene.tif", image, photometric="minisblack", planarconfig="contig", tile=(32, 32),
                     compression="zlib")
    labels, proba = scene_result(model, tmp_path / "scene.tif", tmp_path / "out")
    bundle = load_bundle(model)
    assert bundle.dataset["config"]["normalize"]["mean"] == [2000.0, 1500.0, 1000.0, 500.0]
    predictor = Predictor(bundle, device="cpu", mode="slide", crop_size=[48, 48], stride=[32, 32],
                          blend="gaussian", batch_size=3)
    expected = predictor.logits_batch([tifffile.imread(tmp_path / "scene.tif")])[0]
    assert labels.shape == (150, 110) and len(np.unique(labels)) > 1
    assert np.array_equal(labels, expected.argmax(0).numpy())
    np.testing.assert_allclose(proba, expected.softmax(0).permute(1, 2, 0).numpy(), rtol=0, atol=1e-5)


def test_a_georeferenced_scene_gives_cloud_optimized_geotiffs_with_its_crs_and_transform(checkpoint, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    image = np.random.default_rng(0).integers(0, 256, (170, 130, 3), dtype=np.uint8)
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", height=170, width=130, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=transform, tiled=True, blockxsize=32, blockysize=32,
                       compress="deflate", interleave="pixel") as dst:
        dst.write(np.moveaxis(image, -1, 0))
    overrides = scene_overrides(checkpoint, tmp_path / "scene.tif", tmp_path / "out", "save_proba=true")
    labels, proba = scene_result(checkpoint, tmp_path / "scene.tif", tmp_path / "out")
    for name in ("scene.tif", "scene_proba.tif"):
        with rasterio.open(tmp_path / "out" / name) as src:
            assert src.crs == rasterio.crs.CRS.from_epsg(32633) and src.transform == transform
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.block_shapes[0] == (256, 256)
            assert src.count == (1 if name == "scene.tif" else 5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene.tif", "scene_proba.tif"]
    predictor = Predictor(load_bundle(checkpoint), device="cpu", mode="slide", crop_size=[48, 48],
                          stride=[32, 32], blend="gaussian", batch_size=3)
    expected = predictor.logits_batch([image])[0]
    assert np.array_equal(labels, expected.argmax(0).numpy()) and len(np.unique(labels)) > 1
    np.testing.assert_allclose(proba, expected.softmax(0).permute(1, 2, 0).numpy(), rtol=0, atol=1e-5)
    assert infer_job(compose_infer(overrides)).skipped == [tmp_path / "scene.tif"]  # the run is recognised
