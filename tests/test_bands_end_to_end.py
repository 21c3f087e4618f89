"""A 4-band 16-bit dataset from training to prediction: the model's in_channels follows from the data, and
training, evaluation, the Predictor and tools/infer.py build the identical tensor from the same file, in the
file's own units (nothing truncated or scaled to 8 bits)."""
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segdense.data import DatasetFileError
from train_utils import TINY, compose_config

MEAN, STD = [2000.0, 1500.0, 1000.0, 500.0], [1000.0, 800.0, 600.0, 300.0]


def write_folder(root, count=4, size=32, bands=4):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image = rng.integers(0, 4000, (bands, size, size), dtype=np.uint16)  # (C, H, W), values 0..3999
        tifffile.imwrite(root / "images" / f"s{i}.tif", image, photometric="minisblack", planarconfig="separate")
        Image.fromarray((image[0] > 2000).astype(np.uint8)).save(root / "masks" / f"s{i}.png")
    return root


def folder_overrides(root, normalize=f"{{mean:{MEAN},std:{STD}}}"):
    base = [o for o in TINY if not o.startswith(("dataset.", "crop_size"))]
    return base + ["dataset=folder", f"dataset.root={root}", "dataset.train_split=all", "dataset.val_split=all",
                   "dataset.class_names=[low,high]", f"dataset.normalize={normalize}".replace(" ", ""),
                   "augmentation=flip", "crop_size=[32,32]", "iterations=2", "batch_size=2", "val_batch_size=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from segdense.config.train_job import train

    tmp = tmp_path_factory.mktemp("bands")
    root = write_folder(tmp / "data")
    train(compose_config(folder_overrides(root)), run_dir=tmp / "run")
    torch.use_deterministic_algorithms(False)
    return root, tmp / "run" / "checkpoints" / "last.pt", tmp


def test_in_channels_follows_from_the_dataset(trained):
    from segdense.inference import load_bundle

    _, checkpoint, _ = trained
    assert load_bundle(checkpoint).model.model_config["backbone"]["in_channels"] == 4


def test_training_evaluation_predictor_and_infer_build_the_identical_tensor(trained):
    from segdense.config.eval_job import build_eval_dataset
    from segdense.config.infer_job import infer_job
    from segdense.config.train_job import build_datasets
    from segdense.inference import Predictor, load_bundle
    from test_eval import compose_eval
    from test_infer import compose_infer

    root, checkpoint, tmp = trained
    path = root / "images" / "s0.tif"
    raw = np.moveaxis(tifffile.imread(path), 0, -1).astype(np.float64)
    expected = torch.from_numpy(((raw - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)
    _, val_set = build_datasets(compose_config(folder_overrides(root)))
    bundle = load_bundle(checkpoint)
    eval_set, _ = build_eval_dataset(compose_eval([f"checkpoint={checkpoint}"]), bundle)
    predictor = Predictor(bundle, device="cpu")
    tensors = {"training": val_set[0][0], "evaluation": eval_set[0][0], "predictor": predictor.preprocess(path)[1]}
    for where, tensor in tensors.items():
        assert torch.equal(tensor, expected), where  # bit for bit, in the file's own units
    out = tmp / "infer"
    infer_job(compose_infer([f"checkpoint={checkpoint}", f"input={path}", f"output={out}", "save_proba=true",
                             "overlay=false", "progress=false", "device=cpu"]))
    proba = np.load(out / "s0_proba.npy").astype(np.float32)
    assert np.allclose(proba, predictor.predict_proba(str(path)), atol=1e-3)  # float16 on disk


def test_sixteen_bit_greyscale_png_is_identical_for_training_and_prediction(tmp_path):
    from segdense.config.train_job import build_datasets
    from segdense.data import build_transforms
    from segdense.inference.images import load_image

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    values = np.linspace(0, 3999, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(values).save(root / "images" / "g.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / "g.png")
    _, val_set = build_datasets(compose_config(folder_overrides(root, "{mean:[2000],std:[1000]}")))
    transform = build_transforms([{"type": "Normalize"}], normalize={"mean": [2000], "std": [1000]})
    image = load_image(root / "images" / "g.png", rgb_arrays=False)
    predicted = transform(image, np.zeros((32, 32), np.uint8))[0]
    assert torch.equal(val_set[0][0], predicted)
    assert val_set[0][0].max().item() == pytest.approx((3999 - 2000) / 1000)  # 3999 is 3999, not 255


def test_an_image_with_another_band_count_is_named_with_the_numbers(tmp_path):
    from segdense.config.train_job import build_datasets, dataset_bands

    root = write_folder(tmp_path / "data", count=2)
    tifffile.imwrite(root / "images" / "s1.tif", np.zeros((3, 32, 32), np.uint16), photometric="minisblack",
                     planarconfig="separate")
    train_set, val_set = build_datasets(compose_config(folder_overrides(root)))
    assert dataset_bands(train_set, val_set) == 4
    with pytest.raises(DatasetFileError, match=r"s1.tif: image has 3 band\(s\) but the model takes in_channels=4"):
        val_set[1]


def test_eight_bit_normalisation_on_sixteen_bit_data_is_one_error_naming_the_file(tmp_path):
    from segdense.config.train_job import build_datasets

    root = write_folder(tmp_path / "data", count=1, bands=3)
    overrides = [o for o in folder_overrides(root) if not o.startswith("dataset.normalize")]
    _, val_set = build_datasets(compose_config(overrides))
    with pytest.raises(DatasetFileError, match=r"s0.tif: uint16 image \(values \d+..\d+\) cannot be normalised by "
                                               r"Normalize \(max_pixel_value 255, for 8-bit data\)"):
        val_set[0]


def test_an_explicit_in_channels_that_disagrees_with_the_data_is_one_error(tmp_path):
    from segdense.config.train_job import model_config
    from segdense.errors import ConfigError

    cfg = compose_config(folder_overrides(tmp_path) + ["+backbone.in_channels=3"])
    with pytest.raises(ConfigError, match=r"backbone.in_channels=3, but the dataset's images have 4 band\(s\)"):
        model_config(cfg, 2, in_channels=4)
