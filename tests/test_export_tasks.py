"""ONNX export of binary and multilabel models: the real-image parity check compares the task's labels (sigmoids
above the threshold) and probabilities, and the INT8 guard scores with the task's metric."""
import json

import pytest
import torch

from segdense.config.export_job import export_job
from segdense.export.formats import LogitsOnly
from segdense.export.parity import parity_on_images, validation_images
from segdense.inference import Predictor, load_bundle

from task_fixtures import binary_checkpoint, multilabel_checkpoint  # noqa: F401
from test_export import compose_export


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_onnx_export_keeps_the_tasks_labels_and_probabilities(task, tmp_path, request, capsys):
    checkpoint = request.getfixturevalue(f"{task}_checkpoint")
    output = tmp_path / "m.onnx"
    results = export_job(compose_export([f"checkpoint={checkpoint}", f"output={output}", "verify_images=2"]))
    parity = results[-1]["real_images"]
    assert parity["agreement"] == 100.0 and parity["max_proba_diff"] < 1e-5
    assert f"{task} label agreement 100.000 %" in capsys.readouterr().out
    exported, eager = Predictor.from_checkpoint(output, device="cpu"), Predictor.from_checkpoint(checkpoint,
                                                                                                 device="cpu")
    assert exported.task.name == task and exported.task.threshold == eager.task.threshold
    image = (torch.rand(48, 40, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    assert (exported.predict(image) == eager.predict(image)).all()
    assert abs(exported.predict_proba(image) - eager.predict_proba(image)).max() < 1e-5


def test_binary_parity_compares_thresholded_sigmoids_not_a_one_channel_argmax(binary_checkpoint):
    bundle = load_bundle(binary_checkpoint)
    images = validation_images(bundle, 2)
    reference = LogitsOnly(bundle.model).eval()

    def lowered(x):  # a "runtime" whose logit is 3 lower: labels flip, the argmax of one channel cannot
        with torch.no_grad():
            return reference(x) - 3

    result = parity_on_images(bundle.model, lowered, images, bundle.task)
    with torch.no_grad():
        logits = [reference(image[None]) for _, image in images]
    same = sum(int(((z.sigmoid() > 0.4) == ((z - 3).sigmoid() > 0.4)).sum()) for z in logits)
    assert result["agreement"] == pytest.approx(100.0 * same / sum(z.numel() for z in logits))
    assert result["agreement"] < 50.0 and result["max_abs_diff"] == pytest.approx(3.0, abs=1e-5)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_the_int8_guard_scores_with_the_tasks_metric(task, tmp_path, request, capsys):
    from torch.utils.data import Subset

    from segdense.evaluation import evaluate_model
    from segdense.export.parity import checkpoint_dataset
    from segdense.runtime import whole_logits

    checkpoint = request.getfixturevalue(f"{task}_checkpoint")
    output = tmp_path / "m.int8.onnx"
    result = export_job(compose_export([f"checkpoint={checkpoint}", f"output={output}", "quantize=int8",
                                        "calibration=2", "eval_images=3", "verify_images=0", "max_miou_drop=100"]))
    bundle = load_bundle(checkpoint)
    val = checkpoint_dataset(bundle, "val_split", "test")
    eval_set = Subset(val, range(3))
    eval_set.class_names = val.class_names
    alone = evaluate_model(bundle, eval_set, whole_logits, torch.device("cpu"), batch_size=1, progress=False)
    assert result["fp32_miou"] == pytest.approx(100 * alone["mIoU"], abs=1e-3)
    int8 = load_bundle(output)
    assert int8.task.name == task and int8.model.model_config["num_classes"] == bundle.model.model_config["num_classes"]
    assert json.loads(json.dumps(int8.metadata()))["task"]["name"] == task
