"""Bad input tensors for models built by ``zoo.create_model``: each is an ``InputShapeError`` (or a ``DataError``
for bad targets) whose message names the shape or dtype it got, never a traceback from inside a convolution.

Decided behaviour, per case: floating inputs must match the weights' dtype (no silent cast: a float64 batch is
usually a numpy array that skipped the transforms); integer images are refused with the conversion to apply;
empty batches and NaN/Inf values are refused; EMOv2 takes any spatial size (its attention pads to the window, as
documented), LWGANet and LightM-UNet refuse sizes their pooling cannot take, naming a size that works.
"""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.errors import DataError, InputShapeError, UnknownModelError, ZooError


@pytest.fixture(scope="module")
def emo() -> torch.nn.Module:
    return zoo.create_model("emov2_1m", num_classes=5).eval()


@pytest.fixture(scope="module")
def det() -> torch.nn.Module:
    return zoo.create_model("test_efficientnet", task="detection", head="fcos", num_classes=3, min_size=64,
                            max_size=64)


def _raises(model: torch.nn.Module, *args: object, match: str, error: type[Exception] = InputShapeError) -> str:
    with torch.no_grad(), pytest.raises(error) as e:
        model(*args)
    assert match in str(e.value), str(e.value)
    return str(e.value)


X = torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(3, 32, 32), "got shape (3, 32, 32)"),  # rank 3: a single image without its batch axis
        (torch.randn(1, 2, 3, 32, 32), "got shape (1, 2, 3, 32, 32)"),  # rank 5
        (torch.randn(2, 1, 32, 32), "got shape (2, 1, 32, 32)"),  # grey batch for an RGB model
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8),
         "input has dtype torch.uint8 (shape (2, 3, 32, 32)); models take floating-point images"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.int64), "input has dtype torch.int64 (shape (2, 3, 32, 32))"),
        (X.double(), "input has dtype torch.float64 (shape (2, 3, 32, 32)) but the model's weights are torch.float32"),
        (X.half(), "input has dtype torch.float16 (shape (2, 3, 32, 32)) but the model's weights are torch.float32"),
        (torch.zeros(0, 3, 32, 32), "input is an empty batch (shape (0, 3, 32, 32))"),
    ],
    ids=["rank3", "rank5", "channels", "uint8", "int64", "float64", "float16", "batch0"],
)
def test_emov2_refuses_malformed_batches(emo: torch.nn.Module, x: torch.Tensor, match: str) -> None:
    _raises(emo, x, match=match)


def test_nan_and_inf_are_counted_and_named(emo: torch.nn.Module) -> None:
    x = X.clone()
    x[0, 0, :3, 0] = float("nan")
    _raises(emo, x, match="input (shape (2, 3, 32, 32)) contains 3 NaN and 0 infinite values")
    x = X.clone()
    x[1, 2, 5, 5] = float("-inf")
    _raises(emo, x, match="contains 0 NaN and 1 infinite values")


def test_huge_but_finite_values_are_not_called_nan(emo: torch.nn.Module) -> None:
    with torch.no_grad():  # their sum overflows to inf (the check's fast path); the exact count finds none
        emo(torch.full((1, 3, 8, 8), 3e38))


def test_a_model_moved_to_float64_takes_float64(emo: torch.nn.Module) -> None:
    m = zoo.create_model("emov2_1m", num_classes=5).double().eval()  # the rule follows the weights, not float32
    with torch.no_grad():
        assert m(X.double()).dtype == torch.float64
    _raises(m, X, match="has dtype torch.float32 (shape (2, 3, 32, 32)) but the model's weights are torch.float64")


def test_emov2_takes_inputs_smaller_than_its_stride(emo: torch.nn.Module) -> None:
    with torch.no_grad():  # documented: the attention pads to its window, every stage sees at least 1x1
        y = emo(torch.randn(1, 3, 7, 7))
    assert y.shape == (1, 5) and torch.isfinite(y).all()


def test_lwganet_refuses_sizes_its_pooling_cannot_take() -> None:
    m = zoo.create_model("lwganet_l0", num_classes=3).eval()
    _raises(m, torch.randn(1, 3, 64, 64), match="at least 96: got 64x64. Resize or pad to e.g. 96x96")
    _raises(m, torch.randn(1, 3, 100, 130), match="got 100x130")


def test_lightm_unet_refuses_sizes_off_its_stride() -> None:
    m = zoo.create_model("lightm_unet_2d", num_classes=2).eval()
    _raises(m, torch.randn(1, 3, 30, 30), match="multiple of 8; got (30, 30), pad to e.g. (32, 32)")


@pytest.mark.parametrize("name", ["mobilenetv2_ulsam", "phc_resnet18_cifar"])
def test_other_families_name_the_shape_and_the_dtype(name: str) -> None:
    m = zoo.create_model(name, num_classes=4).eval()
    _raises(m, torch.randn(2, 4, 32, 32), match="got (2, 4, 32, 32)")
    _raises(m, X.double(), match="input has dtype torch.float64")


def test_detection_images_and_targets(det: torch.nn.Module) -> None:
    det.eval()
    _raises(det, [torch.rand(3, 64, 64), torch.rand(1, 64, 64)], match="each image must be (3, H, W), got (1, 64, 64)")
    _raises(det, [(torch.rand(3, 64, 64) * 255).to(torch.uint8)], match="input[0] has dtype torch.uint8")
    det.train()
    img = [torch.rand(3, 64, 64)]
    flipped = [{"boxes": torch.tensor([[40.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([1])}]  # x2 < x1
    _raises(det, img, flipped, match="degenerate box (x2 <= x1 or y2 <= y1) in [[40.0, 10.0, 20.0, 30.0]]",
            error=DataError)
    label = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 30.0]]), "labels": torch.tensor([7])}]
    _raises(det, img, label, match="target 0: label 7 outside [0, 3)", error=DataError)
    _raises(det, img, [], match="1 images but 0 targets")
    det.eval()


def test_change_detection_needs_two_images() -> None:
    m = zoo.create_model("test_efficientnet", task="change_detection", num_classes=2).eval()
    stack = torch.randn(1, 6, 32, 32)
    _raises(m, stack, match="It looks like a 6-channel stack: call model(*torch.chunk(x, 2, dim=1))")
    _raises(m, torch.randn(1, 3, 32, 32), torch.randn(1, 3, 16, 16), match="got (1, 3, 32, 32) and (1, 3, 16, 16)")
    b = torch.randn(1, 3, 32, 32)
    b[0, 0, 0, 0] = float("nan")
    _raises(m, torch.randn(1, 3, 32, 32), b, match="image_b (shape (1, 3, 32, 32)) contains 1 NaN")


def test_segmentation_masks_of_the_wrong_size() -> None:
    m = zoo.create_model("test_efficientnet", task="segmentation", num_classes=3).train()
    _raises(m, torch.randn(2, 3, 32, 32), torch.zeros(2, 16, 16, dtype=torch.long),
            match="targets must be class-index masks (N, 32, 32) matching the input")


def test_unknown_model_and_task_names() -> None:
    with pytest.raises(UnknownModelError) as e:
        zoo.create_model("emov2_1n")
    assert "'emov2_1n'" in str(e.value) and "emov2_1m" in str(e.value)
    with pytest.raises(ZooError, match="unknown task 'classify'; choose one of classification"):
        zoo.create_model("emov2_1m", task="classify")
