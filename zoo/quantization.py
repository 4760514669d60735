"""Quantization-aware fine-tuning (``zoo train model.checkpoint=CKPT train.qat=true``) with PyTorch 2 export QAT:
the fake-quantized graph the trainer trains and the exporter converts (both build it here, so neither imports the
other).

Why: post-training int8 calibrates activation ranges on a few images and rounds the weights once; when that loses
more than about a point, a few epochs of training through the int8 rounding (fake quantization) let the weights
adapt to it. The network is captured with ``torch.export`` (batch axis dynamic), ``prepare_qat_pt2e`` inserts fake
quantizers where the XNNPACK quantizer annotates (symmetric int8, per-channel weights: the scheme XNNPACK runs on
phones), and the trainer trains that graph like any model. Its checkpoint holds the graph's state: the fine-tuned
weights and the learned quantizer statistics, which ``zoo.export.pt2e`` converts into the int8 ``.pte``
(``zoo benchmark``'s ``int8.pte`` row) instead of calibrating again.

Needs the ``executorch`` extra (its XNNPACK quantizer). Only tasks whose model exports as one graph (the task
class's ``exports_one_graph``): a torchvision detector's data-dependent post-processing does not.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import set_layer_config
from torch import nn

from .errors import ConfigError
from .heads import get_task


def xnnpack_qat_quantizer() -> Any:
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
    except ImportError as e:
        raise ConfigError("train.qat=true needs the executorch extra (its XNNPACK quantizer): "
                          "pip install 'lightzoo[executorch]'") from e
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))


_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _without_random_masks(model: nn.Module) -> None:
    """Replace stochastic depth (timm's ``DropPath``: any module with a float ``drop_prob``) and dropout by
    identities before the training-mode capture: their masks are ``aten.bernoulli`` in the graph, which is not Core
    ATen, so the QAT graph would train but never lower to an ExecuTorch int8 file. Replaced, not set to zero, so the
    captured graph is the same whatever drop rates the model was built with (the exporter rebuilds it from the
    checkpoint and must find the same quantizers). A few QAT epochs from a trained checkpoint do without them."""
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, _DROPOUTS) or isinstance(getattr(child, "drop_prob", None), float)]
    for parent, name in targets:
        setattr(parent, name, nn.Identity())


def prepare_qat_model(model: nn.Module, task: str, in_chans: int, img_size: int) -> nn.Module:
    """``model`` as a fake-quantized training graph (``prepare_qat_pt2e``) whose ``train()`` / ``eval()`` switch
    batch norm and the quantizers' observers like a normal module's."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    task_cls = get_task(task)
    if not task_cls.exports_one_graph:
        raise ConfigError(f"train.qat=true needs a model that exports as one graph; a {task} model's "
                          "post-processing does not")
    example = tuple(torch.randn(2, in_chans, img_size, img_size) for _ in task_cls.input_names)
    batch = torch.export.Dim("batch", min=1, max=4096)
    _without_random_masks(model)
    model.train()
    try:
        # under timm's export switch, as every exporter captures: the models' graph forms (EMOv2's attention within
        # XNNPACK's six dimensions); they keep training semantics (batch-norm folding is for eval mode only)
        with set_layer_config(exportable=True):
            graph = torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example)).module()
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"train.qat=true: torch.export of the model failed: {first}") from e
    prepared = allow_exported_model_train_eval(prepare_qat_pt2e(graph, xnnpack_qat_quantizer()))
    # dense tasks compute their loss inside the model from targets, which the graph cannot take: the trainer
    # computes it from the graph's outputs instead (TaskModel.prediction_loss)
    prediction_loss = getattr(model, "prediction_loss", None)
    prepared.qat_loss = prediction_loss() if callable(prediction_loss) else None
    return prepared
