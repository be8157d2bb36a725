"""Predictor: sliding window, TTA, streamed writing, and predictions back in the source format and geometry."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch
import toy
from PIL import Image
from pydantic import ValidationError

from segflow.data.phantoms import write_phantom_dataset
from segflow.data.readers import read
from segflow.inference import tta
from segflow.inference.predict import back_to_source
from segflow.inference.writers import source_geometry
from segflow.networks.factory import build_network
from segflow.nodes.base import RunContext
from segflow.nodes.data import MedicalSegmentationLoader, MedicalSegmentationLoaderConfig
from segflow.nodes.inference import Predictor, PredictorConfig
from segflow.nodes.networks import UNet2DConfig
from segflow.workflow import executor


def context(tmp_path, messages=None):
    return RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False,
                      log=messages.append if messages is not None else (lambda m: None))


def loaders(tmp_path, root, **cfg):
    node = MedicalSegmentationLoader("data", MedicalSegmentationLoaderConfig(data_dir=str(root), **cfg), context(tmp_path))
    out = node.run()
    return out["val_loader"], out["dataset_info"]


def predict(tmp_path, model, loader, info=None, messages=None, **cfg):
    node = Predictor("predict", PredictorConfig(**cfg), context(tmp_path, messages))
    return node.run(model=model, loader=loader, dataset_info=info)["predictions"]


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


class Threshold(torch.nn.Module):
    """Foreground where the (z-scored) image is bright: a model that is right on the phantoms without training,
    so a prediction mapped back to the wrong place or size shows up as a low Dice."""

    def __init__(self, level=0.5):
        super().__init__()
        self.level = level

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), 8 * (x[:, :1] - self.level)], dim=1)


def symmetric_net(dims=2):
    """Convolutions whose kernels are mirror-symmetric along every axis: flipping the input flips the output."""
    torch.manual_seed(0)
    net = toy.tiny_net(dims=dims, out_channels=3)
    with torch.no_grad():
        w = net[0].weight
        for axis in range(2, w.ndim):
            w.copy_((w + w.flip(axis)) / 2)
    return net


@pytest.fixture(scope="module")
def phantom2d(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("p") / "p2d", "2d", num_cases=4, size=(48, 40))


@pytest.fixture(scope="module")
def phantom3d(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("p") / "p3d", "3d", num_cases=3, size=(24, 20, 16))


# ---- sliding window and TTA ------------------------------------------------------------------

@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_sliding_window_equals_direct_pass_at_patch_size(blend):
    torch.manual_seed(0)
    net = build_network("UNet2D", UNet2DConfig(base_channels=4, depth=3)).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        direct = tta.to_probabilities(net(x))
        slid = tta.predict_probabilities(net, x, (32, 32), overlap=0.5, blend_mode=blend, sw_batch_size=2)
    assert slid.shape == direct.shape == (2, 2, 32, 32)
    torch.testing.assert_close(slid, direct, atol=1e-5, rtol=1e-5)


def test_sliding_window_over_a_larger_image_of_odd_size():
    pointwise = torch.nn.Conv2d(1, 3, 1)  # no spatial context: every window agrees with the whole-image pass
    x = torch.randn(1, 1, 45, 70)
    with torch.no_grad():
        slid = tta.predict_probabilities(pointwise, x, (16, 16), overlap=0.25)
        direct = tta.to_probabilities(pointwise(x))
    torch.testing.assert_close(slid, direct, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_flip_tta_on_a_flip_equivariant_model_equals_the_plain_prediction(dims):
    net = symmetric_net(dims).eval()
    x = torch.randn((1, 1) + (12,) * dims)
    variants = tta.variants(True, None, [1.0], dims)
    assert variants == [(1.0, ())] + [(1.0, (a,)) for a in range(dims)]
    with torch.no_grad():
        plain = tta.predict_probabilities(net, x, None)
        flipped = tta.predict_probabilities(net, x, None, tta=variants)
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=1e-5)


def test_tta_undoes_each_flip_and_scale():
    torch.manual_seed(0)
    net = toy.tiny_net(out_channels=2).eval()  # not equivariant: each variant differs
    x = torch.randn(1, 1, 16, 20)
    variants = tta.variants(["flip", "scale"], [1], [0.5, 1.0], 2)
    assert variants == [(0.5, ()), (0.5, (1,)), (1.0, ()), (1.0, (1,))]
    with torch.no_grad():
        got = tta.predict_probabilities(net, x, None, tta=variants)
        small = torch.nn.functional.interpolate(x, size=(8, 10), mode="bilinear", align_corners=False)
        up = lambda p: torch.nn.functional.interpolate(p, size=(16, 20), mode="bilinear", align_corners=False)
        prob = lambda t: torch.softmax(net(t), 1)
        want = (up(prob(small)) + up(prob(small.flip(3)).flip(3)) + prob(x) + prob(x.flip(3)).flip(3)) / 4
        assert not torch.allclose(prob(x), prob(x.flip(3)).flip(3), atol=1e-3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="tta_flips \\[2\\] names axes \\[2\\], but the data is 2-D"):
        tta.variants(["flip"], [2], [1.0], 2)


def test_gaussian_blending_weighs_windows_by_a_gaussian_of_one_eighth_of_the_window():
    """Two windows of 8 over 12 voxels (overlap 0.5: starts 0 and 4). The model answers each window with
    one logit for class 1: 0 for the first window (inputs 0..7), 1 for the second (4..11). Where they
    overlap, the blended logit is w1 / (w0 + w1), each w the window's Gaussian weight, exp(-d^2 / 2 sigma^2)
    with d the distance to the window's centre (3.5) and sigma = 8 / 8 = 1, as nnU-Net's sigma_scale 1/8."""
    def window_logits(x):  # (B, 1, 8, 1) -> (B, 2, 8, 1), constant over the window
        level = (x.mean(dim=(2, 3), keepdim=True) - 3.5) / 4  # 0 for the first window, 1 for the second
        return torch.cat([torch.zeros_like(x), level.expand_as(x)], dim=1)

    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 12, 1)
    p = tta.predict_probabilities(window_logits, x, (8, 1), overlap=0.5, blend_mode="gaussian")
    blended = torch.logit(p[0, 1, :, 0].double())
    weight = lambda d: np.exp(-((d - 3.5) ** 2) / 2)  # noqa: E731
    want = [0.0] * 4 + [weight(i - 4) / (weight(i) + weight(i - 4)) for i in range(4, 8)] + [1.0] * 4
    np.testing.assert_allclose(blended.numpy(), want, atol=1e-4)
    assert abs(want[5] - 1 / (1 + np.e ** 2)) < 1e-12  # voxel 5: 1.5 from the first centre, 2.5 from the second
    constant = torch.logit(tta.predict_probabilities(window_logits, x, (8, 1), overlap=0.5, blend_mode="constant")
                           [0, 1, 4:8, 0].double())
    np.testing.assert_allclose(constant.numpy(), 0.5, atol=1e-4)  # the check tells the blend modes apart


@pytest.mark.parametrize("dims", [2, 3])
def test_flip_combinations_enumerate_nnunet_mirror_axes(dims):
    """nnU-Net's mirroring: the plain pass and every non-empty set of axes (itertools.combinations of
    its mirror axes, smallest sets first); the flips are undone before averaging."""
    expected = {2: [(), (0,), (1,), (0, 1)],
                3: [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]}[dims]
    variants = tta.variants(["flip"], None, [1.0], dims, combinations=True)
    assert variants == [(1.0, axes) for axes in expected]
    assert tta.variants(["flip"], [2, 0], [1.0], 3, combinations=True) == [
        (1.0, ()), (1.0, (2,)), (1.0, (0,)), (1.0, (2, 0))]
    seen = []

    def recording(t):  # pointwise, so flip-equivariant: the average equals the plain pass
        seen.append(t.clone())
        return torch.cat([torch.zeros_like(t), t], dim=1)

    x = torch.randn((1, 1) + (4, 5, 6)[:dims])
    got = tta.predict_probabilities(recording, x, None, tta=variants)
    torch.testing.assert_close(got, tta.to_probabilities(recording(x)))
    flipped = [x.flip([2 + a for a in axes]) if axes else x for axes in expected]
    assert len(seen) == len(expected) + 1 and all(torch.equal(a, b) for a, b in zip(seen, flipped))


def test_single_sigmoid_channel_becomes_two_class_probabilities():
    p = tta.to_probabilities(torch.tensor([[[[0.0, 10.0]]]]))
    assert p.shape == (1, 2, 1, 2)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 1, 2))


# ---- back to the source format and geometry ------------------------------------------------------

def test_2d_png_predictions_at_the_source_size(tmp_path, phantom2d):
    val, info = loaders(tmp_path, phantom2d, image_size=32, batch_size=2, val_fraction=0.5)
    assert info.patch_size == (32, 32)
    preds = predict(tmp_path, Threshold(), val, info, tta=True, save_probabilities=True)
    assert len(preds) == 2 and preds.num_classes == 2 and preds.spatial_dims == 2
    assert preds.class_names == ("background", "organ") and preds.output_dir == tmp_path / "predictions"
    for rec in preds:
        assert rec.prediction_path.suffix == ".png" and rec.prediction_path.parent == tmp_path / "predictions"
        with Image.open(rec.prediction_path) as im:
            assert im.size == (40, 48) and im.mode == "L"  # PIL: (width, height) of the 48 x 40 source
        image, pred, label = preds.load(rec)
        assert pred.shape == label.shape == image.shape[1:] == (48, 40)
        assert rec.image_paths == (phantom2d / "imagesTr" / f"{rec.case}.png",)
        assert rec.label_path == phantom2d / "labelsTr" / f"{rec.case}.png" and rec.spacing is None
        assert dice(pred == 1, label == 1) > 0.85
        assert np.load(rec.probabilities_path).shape == (2, 48, 40)


def test_3d_nifti_prediction_keeps_the_source_affine_and_shape(tmp_path, phantom3d):
    val, info = loaders(tmp_path, phantom3d, image_size=16, val_fraction=0.4)
    preds = predict(tmp_path, Threshold(3.0), val, info, output_dir=str(tmp_path / "out"))
    assert len(preds) == 2 and preds.spatial_dims == 3
    for rec in preds:
        src, out = nib.load(rec.image_paths[0]), nib.load(rec.prediction_path)
        assert rec.prediction_path.name.endswith(".nii.gz") and rec.prediction_path.parent == tmp_path / "out"
        assert not np.allclose(src.affine, np.eye(4))
        np.testing.assert_allclose(out.affine, src.affine)
        assert out.shape == src.shape == (24, 20, 16) and out.get_data_dtype() == np.uint8
        assert rec.spacing == (1.2, 1.2, 2.0)
        assert dice(np.asarray(out.dataobj) == 1, read(rec.label_path).array == 1) > 0.8


def test_3d_resampled_loader_is_mapped_back_to_the_source_grid(tmp_path, phantom3d):
    # a finer grid than the file's (1.2, 1.2, 2.0): going there and back loses nothing, so any shift,
    # flip or scaling error in the way back shows as a Dice below 1
    val, info = loaders(tmp_path, phantom3d, image_size=8, val_fraction=0.4, target_spacing=[0.6, 0.6, 1.0])
    batch = next(iter(val))
    assert batch["image"].shape[2:] == (48, 40, 32)  # the loader really resampled
    onehot = torch.nn.functional.one_hot(batch["label"][0, 0].long(), 2).permute(3, 0, 1, 2).float()
    case = batch["case"][0]
    geometry = source_geometry(phantom3d / "imagesTr" / f"{case}.nii.gz")
    back = back_to_source(onehot, geometry, 3, True, batch["affine"][0].numpy())
    original = read(phantom3d / "labelsTr" / f"{case}.nii.gz").array
    assert back.shape == (2, 24, 20, 16) and dice(back.argmax(0).numpy() == 1, original == 1) > 0.99
    preds = predict(tmp_path, Threshold(), val, info)
    out = nib.load(preds.records[0].prediction_path)
    assert out.shape == (24, 20, 16)
    np.testing.assert_allclose(out.affine, geometry.affine)


def test_explicit_formats_and_a_png_for_3d_is_refused(tmp_path, phantom2d, phantom3d):
    val, info = loaders(tmp_path, phantom2d, image_size=32, batch_size=4, val_fraction=0.5)
    rec = predict(tmp_path, Threshold(), val, info, output_format="nifti").records[0]
    assert rec.prediction_path.name.endswith(".nii.gz") and nib.load(rec.prediction_path).shape[:2] == (48, 40)
    rec = predict(tmp_path, Threshold(), val, info, output_format="npy", output_dir="npy").records[0]
    assert np.load(rec.prediction_path).shape == (48, 40)
    val3, info3 = loaders(tmp_path, phantom3d, image_size=16, val_fraction=0.4)
    with pytest.raises(ValueError, match="output_format png is for 2-D data only"):
        predict(tmp_path, Threshold(), val3, info3, output_format="png")


def test_each_case_is_written_before_the_next_batch_is_read(tmp_path):
    """Streaming: with a plain loader (no source files), batch k's files exist when batch k+1 is drawn."""
    out = tmp_path / "predictions"

    class Watching:
        dataset = list(range(3))

        def __iter__(self):
            for k in range(3):
                if k:
                    assert (out / f"c{k - 1}.npy").is_file(), f"c{k - 1} not written before batch {k}"
                yield {"image": torch.randn(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8, dtype=torch.long),
                       "case": [f"c{k}"]}

    messages = []
    preds = predict(tmp_path, toy.tiny_net(), Watching(), messages=messages)
    assert [r.case for r in preds] == ["c0", "c1", "c2"] and len([m for m in messages if " -> " in m]) == 3
    image, pred, label = preds.load(preds.records[2])
    assert image.shape == (1, 8, 8) and pred.shape == label.shape == (8, 8)


def test_no_loader_and_a_wrong_roi_are_clear_errors(tmp_path, phantom2d):
    with pytest.raises(ValueError, match="loader input is empty .*val_fraction"):
        predict(tmp_path, toy.tiny_net(), None)
    val, info = loaders(tmp_path, phantom2d, image_size=32, val_fraction=0.5)
    with pytest.raises(ValueError, match="roi_size \\[8, 8, 8\\] has 3 values but the data is 2-D"):
        predict(tmp_path, Threshold(), val, info, roi_size=[8, 8, 8])


# ---- config and static checks --------------------------------------------------------------------

def test_config_takes_gui_strings():
    cfg = PredictorConfig(roi_size="[64, 64]", overlap="0.25", sw_batch_size="2", tta="true",
                          tta_flips="[0]", tta_scales="[0.75, 1.0, 1.25]", save_probabilities="True",
                          mixed_precision="false", device="CPU", blend_mode="constant")
    assert cfg.roi_size == [64, 64] and cfg.overlap == 0.25 and cfg.sw_batch_size == 2 and cfg.tta is True
    assert cfg.tta_flips == [0] and cfg.tta_scales == [0.75, 1.0, 1.25] and cfg.save_probabilities is True
    assert cfg.device == "cpu" and cfg.mixed_precision is False
    assert PredictorConfig(tta="flip").tta == ["flip"]
    assert PredictorConfig(tta='["Flips", "scale"]').tta == ["flip", "scale"]
    assert PredictorConfig(roi_size="null").roi_size is None and PredictorConfig(roi_size="96").roi_size == 96


@pytest.mark.parametrize("bad", [{"overlap": 1.0}, {"blend_mode": "mean"}, {"tta": ["rotate"]}, {"tta_scales": [0]},
                                 {"output_format": "jpg"}, {"device": "tpu"}, {"roi_size": [8]}, {"tta_flips": [3]}])
def test_bad_values_are_rejected(bad):
    with pytest.raises(ValidationError):
        PredictorConfig(**bad)


def test_static_check_against_the_loader():
    loader = ("MedicalSegmentationLoader", MedicalSegmentationLoaderConfig(synthetic="phantom3d"))
    found = Predictor.check(PredictorConfig(roi_size=[64, 64], output_format="png"), {"loader": loader})
    assert sorted(f.field for f in found) == ["output_format", "roi_size"]
    assert Predictor.check(PredictorConfig(roi_size=[64, 64, 32]), {"loader": loader}) == []


def test_workflow_train_then_predict_and_checkpoint_then_predict(tmp_path, monkeypatch):
    """Auto-wiring from the CLI's executor: Predictor takes the Trainer's model and the val_loader; a second
    workflow rebuilds the network, loads the Trainer's best.pt and predicts the same labels."""
    monkeypatch.chdir(tmp_path)
    loader = {"type": "MedicalSegmentationLoader", "name": "data",
              "config": {"data_dir": "data/p2d", "synthetic": "phantom2d", "synthetic_cases": 4,
                         "image_size": 32, "val_fraction": 0.5, "batch_size": 2}}
    net = {"type": "UNet2D", "name": "model", "config": {"base_channels": 4, "depth": 3}}
    train = [loader, net, {"type": "LossFunction", "name": "loss", "config": {}},
             {"type": "Optimizer", "name": "opt", "config": {}},
             {"type": "Trainer", "name": "trainer", "config": {"epochs": 1, "device": "cpu"}},
             {"type": "Predictor", "name": "predict", "config": {"device": "cpu"}}]
    (tmp_path / "train.json").write_text(json.dumps({"workflow": "train", "nodes": train}))
    first = executor.run_workflow(tmp_path / "train.json", progress=False, log=lambda m: None)
    preds = first.outputs["predict"]["predictions"]
    assert len(preds) == 2 and all(r.prediction_path.parent == first.run_dir / "predictions" for r in preds)
    best = first.run_dir / "checkpoints" / "best.pt"
    again = [loader, net, {"type": "CheckpointLoader", "name": "weights", "config": {"checkpoint_path": str(best)}},
             {"type": "Predictor", "name": "predict", "config": {"device": "cpu"}}]
    (tmp_path / "again.json").write_text(json.dumps({"workflow": "again", "nodes": again}))
    second = executor.run_workflow(tmp_path / "again.json", progress=False, log=lambda m: None)
    for a, b in zip(preds, second.outputs["predict"]["predictions"]):
        assert a.case == b.case
        np.testing.assert_array_equal(read(a.prediction_path).array, read(b.prediction_path).array)


# ---- test images without labels (loader subset "test") -----------------------------------------

def _phantom_test_label(i, shape):
    """The ground truth the phantom writer drew for (unlabelled) test case i, from the same random stream."""
    from segflow.data.phantoms import TEST_SIZE_STEPS_2D, TEST_STREAM, phantom_case

    if len(shape) == 2:
        dh, dw = TEST_SIZE_STEPS_2D[i % len(TEST_SIZE_STEPS_2D)]
        shape = (max(32, shape[0] + dh), max(32, shape[1] + dw))
    return phantom_case(np.random.default_rng([0, TEST_STREAM + i]), shape, 2)[1]


def test_unlabelled_3d_test_volumes_are_predicted_in_their_own_geometry_and_skipped_by_evaluation(tmp_path, phantom3d):
    from segflow.evaluation.metrics import evaluate

    val, info = loaders(tmp_path, phantom3d, subset="test", image_size=16)
    preds = predict(tmp_path, Threshold(3.0), val, info)
    assert [r.case for r in preds] == ["phantom_003", "phantom_004"] and preds.num_classes == 2
    for i, rec in enumerate(preds):
        assert rec.label_path is None and rec.image_paths == (phantom3d / "imagesTs" / f"{rec.case}.nii.gz",)
        src, out = nib.load(rec.image_paths[0]), nib.load(rec.prediction_path)
        np.testing.assert_allclose(out.affine, src.affine)
        assert out.shape == src.shape == (24, 20, 16) and rec.spacing == (1.2, 1.2, 2.0)
        truth = _phantom_test_label(i, (24, 20, 16))
        assert dice(np.asarray(out.dataobj) == 1, truth == 1) > 0.8
        assert preds.load(rec)[2] is None
    messages = []
    result = evaluate(preds, output_dir=tmp_path / "eval", log=messages.append)
    assert result["num_evaluated"] == 0 and result["skipped_no_label"] == ["phantom_003", "phantom_004"]
    assert any("2 of 2 case(s) had no ground truth" in m for m in messages)


def test_unlabelled_2d_test_images_of_varying_size_and_labels_used_when_present(tmp_path):
    from segflow.evaluation.metrics import evaluate

    root = write_phantom_dataset(tmp_path / "p", "2d", num_cases=2, size=(48, 40))
    # ground truth for one test image, in labelsTs/ (MSD convention): used for evaluation
    truth1 = _phantom_test_label(1, (48, 40))
    (root / "labelsTs").mkdir()
    Image.fromarray(truth1).save(root / "labelsTs" / "phantom_003.png")
    val, info = loaders(tmp_path, root, subset="test", image_size=32, batch_size=4)
    preds = predict(tmp_path, Threshold(), val, info)
    sizes = {}
    for i, rec in enumerate(preds):
        with Image.open(rec.prediction_path) as im, Image.open(rec.image_paths[0]) as src:
            assert im.size == src.size
            sizes[rec.case] = im.size
        pred = np.asarray(Image.open(rec.prediction_path))
        assert dice(pred == 1, _phantom_test_label(i, (48, 40)) == 1) > 0.85
    assert sizes == {"phantom_002": (40, 48), "phantom_003": (72, 48), "phantom_004": (40, 32), "phantom_005": (32, 64)}
    assert [r.label_path and r.label_path.name for r in preds] == [None, "phantom_003.png", None, None]
    result = evaluate(preds, log=lambda m: None)
    assert result["num_evaluated"] == 1 and [r["case"] for r in result["cases"]] == ["phantom_003"]
    assert result["cases"][0]["dice"] > 0.85
