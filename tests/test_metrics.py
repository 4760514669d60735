"""Metrics against values computed by hand on small fixed examples."""

import math

import numpy as np
import pytest
import torch

from zoo.errors import DataError
from zoo.metrics import (
    ChangeMeter,
    ConfusionMeter,
    accuracy,
    change_metrics,
    coco_map,
    confusion_matrix,
    segmentation_metrics,
    topk_accuracy,
)


def test_topk_accuracy_hand_computed_and_k_clipped_to_num_classes():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    target = torch.tensor([2, 0, 0])
    res = topk_accuracy(logits, target, topk=(1, 2, 5))
    assert res["top1"] == pytest.approx(1 / 3)
    assert res["top2"] == pytest.approx(2 / 3)
    assert res["top5"] == pytest.approx(1.0)  # only 3 classes: top-5 is every class
    assert accuracy(logits, torch.nn.functional.one_hot(target, 3).float(), (1,)) == [pytest.approx(1 / 3)]


# target / prediction with one ignored pixel; rows of the confusion matrix are ground truth
SEG_T = torch.tensor([[0, 0, 1], [1, 2, 255]])
SEG_P = torch.tensor([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_skips_ignore_index():
    cm = confusion_matrix(SEG_P, SEG_T, 3, ignore_index=255)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]


def test_segmentation_metrics_hand_computed():
    m = segmentation_metrics(confusion_matrix(SEG_P, SEG_T, 3))
    assert m["per_class_iou"] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["per_class_dice"] == pytest.approx([2 / 3, 4 / 5, 1.0])
    assert m["mdice"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 5)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    m = segmentation_metrics(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3))
    assert math.isnan(m["per_class_iou"][2])
    assert m["miou"] == pytest.approx(1.0)


def test_meter_accumulates_over_batches_from_logits():
    meter = ConfusionMeter(3)
    logits = torch.nn.functional.one_hot(SEG_P, 3).permute(2, 0, 1).float()[None]  # (1, 3, 2, 3)
    meter.update(logits[:, :, :1], SEG_T[None, :1])
    meter.update(logits[:, :, 1:], SEG_T[None, 1:])
    assert meter.compute()["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_label_outside_num_classes_is_a_data_error():
    with pytest.raises(DataError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)


def test_change_metrics_hand_computed():
    cm = np.array([[50, 10], [5, 35]])  # [[TN, FP], [FN, TP]]
    m = change_metrics(cm)
    assert m["precision"] == pytest.approx(35 / 45)
    assert m["recall"] == pytest.approx(35 / 40)
    assert m["f1"] == pytest.approx(70 / 85)
    assert m["iou"] == pytest.approx(35 / 50)
    assert m["oa"] == pytest.approx(0.85)
    pe = (55 * 60 + 45 * 40) / 100**2
    assert m["kappa"] == pytest.approx((0.85 - pe) / (1 - pe))


def test_change_meter_without_any_change_reports_undefined_not_perfect():
    meter = ChangeMeter()
    meter.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    m = meter.compute()
    assert math.isnan(m["f1"]) and math.isnan(m["precision"]) and m["oa"] == 1.0


def _t(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_coco_map_perfect_and_partial_iou():
    gt = [_t([[0, 0, 10, 10]], [1])]
    perfect = [{**_t([[0, 0, 10, 10]], [1]), "scores": torch.tensor([0.9])}]
    assert coco_map(perfect, gt)["map"] == pytest.approx(1.0)
    # IoU 0.62: a hit at thresholds .50, .55, .60 only -> 3 of the 10 COCO thresholds
    partial = [{**_t([[0, 0, 10, 6.2]], [1]), "scores": torch.tensor([0.9])}]
    m = coco_map(partial, gt)
    assert m["map50"] == pytest.approx(1.0)
    assert m["map75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.3)


def test_coco_map_missed_object_halves_recall():
    gt = [_t([[0, 0, 10, 10]], [0]), _t([[5, 5, 20, 20]], [0])]
    preds = [{**_t([[0, 0, 10, 10]], [0]), "scores": torch.tensor([0.8])},
             {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}]
    # precision 1 up to recall 0.5, then nothing: 51 of COCO's 101 recall points
    assert coco_map(preds, gt)["map50"] == pytest.approx(51 / 101)
