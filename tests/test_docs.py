"""Numbers the README and docs state, checked against the code and configs they describe."""
import re
from pathlib import Path

import pytest
import yaml

from segdense.backbones import FeatureSpec
from segdense.heads import build_head

ROOT = Path(__file__).resolve().parents[1]

# densenet121's features at output stride 16 (its stride-16 transition keeps block4 at stride 16)
DENSENET121_OS16 = [
    FeatureSpec("stem", 64, 2), FeatureSpec("block1", 256, 4), FeatureSpec("block2", 512, 8),
    FeatureSpec("block3", 1024, 16), FeatureSpec("block4", 1024, 16),
]


def readme_head_counts() -> dict[str, int]:
    text = (ROOT / "README.md").read_text()
    table = text.split("Parameters of each head on densenet121", 1)[1].split("\n\n", 2)[1]
    return {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"\| `(\w+)` \| ([\d,]+) \|", table)}


def test_the_readme_lists_every_head():
    assert set(readme_head_counts()) == {"deeplabv3plus_lite", "fcn", "deeplabv3", "deeplabv3plus", "denseaspp", "fpn",
                                         "aux", "upernet"}


@pytest.mark.parametrize("head", ["deeplabv3plus_lite", "fcn", "deeplabv3", "deeplabv3plus", "denseaspp", "fpn", "aux",
                                  "upernet"])
def test_readme_parameter_count_of_every_head_is_the_built_heads(head):
    built = build_head(head, DENSENET121_OS16, 21, 16)
    assert sum(p.numel() for p in built.parameters()) == readme_head_counts()[head]


def test_docs_data_recipes_are_the_dataset_configs():
    text = (ROOT / "docs" / "data.md").read_text()
    recipes = re.search(r"\(VOC ([^)]*)\)", text).group(0)
    stated = {name.lower(): values
              for name, values in re.findall(r"(VOC|Cityscapes|synthetic|CamVid) ([^,)]+)", recipes)}
    assert set(stated) == {"voc", "cityscapes", "synthetic", "camvid"}
    for name, values in stated.items():
        crop, batch, iterations, lr = (v.strip() for v in values.split("/"))
        config = yaml.safe_load((ROOT / "conf" / "dataset" / f"{name}.yaml").read_text())
        assert crop == "x".join(map(str, config["crop_size"])), name
        assert int(batch) == config["batch_size"], name
        assert int(iterations.replace("k", "000")) == config["iterations"], name
        assert float(lr) == config["lr"], name
