"""ImageNet backbone initialisation (training/pretrained.py) from files in the official ImageNet layouts."""
import numpy as np
import pytest

from fcfi_jax.convert.mapping import ConversionError, export_official_state_dict
from fcfi_jax.models.is_model import RELEASED_ARCHS, build_model
from fcfi_jax.training.pretrained import load_pretrained

torch = pytest.importorskip("torch")
TINY_HRNET = dict(RELEASED_ARCHS["hrnet18s"], width=8, ocr_width=16, mid_ch=16, small=True)


def _hrnet_imagenet_file(tmp_path, source, drop=None):
    """An HRNet-Image-Classification style file: backbone keys with 'model.' prefix + a classifier."""
    sd = {k[len("feature_extractor."):]: v for k, v in export_official_state_dict(source).items()
          if k.startswith("feature_extractor.") and k.split(".")[1].startswith(
              ("conv1", "bn1", "conv2", "bn2", "layer1", "transition", "stage"))}
    sd = {"model." + k: torch.tensor(v) for k, v in sd.items() if k != drop}
    sd["model.classifier.weight"] = torch.zeros(1000, 2048)
    sd["model.bn1.num_batches_tracked"] = torch.tensor(5)
    path = tmp_path / "hrnet_imagenet.pth"
    torch.save(sd, path)
    return path


def test_hrnet_imagenet_fills_the_backbone_only(tmp_path):
    source = build_model(TINY_HRNET, seed=1)
    path = _hrnet_imagenet_file(tmp_path, source)
    model = build_model(TINY_HRNET, seed=2)
    before = export_official_state_dict(model)
    report = load_pretrained(model, path)
    after, want = export_official_state_dict(model), export_official_state_dict(source)
    assert report["format"] == "hrnet_imagenet" and report["unused_file_keys"] == 1  # the classifier
    backbone = [k for k in after if k.startswith(("feature_extractor.stage", "feature_extractor.conv1",
                                                  "feature_extractor.layer1", "feature_extractor.transition"))]
    assert len(backbone) > 100 and report["loaded"] >= len(backbone)
    for k in backbone:
        np.testing.assert_array_equal(after[k], want[k], err_msg=k)
    # FCFI modules, heads and maps_transform keep their own initialisation
    for k in ("feature_extractor.correction_module.conv1.0.weight", "maps_transform.0.weight",
              "feature_extractor.cls_head.weight"):
        if k in after:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_missing_backbone_key_is_reported(tmp_path):
    source = build_model(TINY_HRNET, seed=1)
    path = _hrnet_imagenet_file(tmp_path, source, drop="stage3.0.branches.1.0.conv1.weight")
    with pytest.raises(ConversionError, match=r"1 missing.*\n.*stage3\.0\.branches\.1\.0\.conv1\.weight"):
        load_pretrained(build_model(TINY_HRNET), path)


def test_wrong_family_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"layer4.0.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, path)
    with pytest.raises(ConversionError, match="ResNet ImageNet weights but the model is hrnet"):
        load_pretrained(build_model(TINY_HRNET), path)


def test_resnet_imagenet_fills_the_backbone(tmp_path):
    arch = dict(RELEASED_ARCHS["r101"], backbone="resnet50")
    source, model = build_model(arch, seed=1), build_model(arch, seed=2)
    before = export_official_state_dict(model)
    prefix = "feature_extractor.backbone."
    sd = {k[len(prefix):]: torch.tensor(v) for k, v in export_official_state_dict(source).items()
          if k.startswith(prefix)}
    sd["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(sd, tmp_path / "r50.pth")
    report = load_pretrained(model, tmp_path / "r50.pth")
    assert report["format"] == "resnet_imagenet" and report["unused_file_keys"] == 1
    after, want = export_official_state_dict(model), export_official_state_dict(source)
    for k in after:  # backbone from the file, everything else (ASPP, FFCM, CFFM, heads) untouched
        np.testing.assert_array_equal(after[k], want[k] if k.startswith(prefix) else before[k], err_msg=k)
