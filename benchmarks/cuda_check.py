"""CUDA check (run on a GPU machine; CI has none): every model computes on CUDA what it computes on CPU.

For each registered model: build it once, run the same input on CPU and on CUDA (fp32, TF32 off) and report the
max abs difference; then bf16/fp16 autocast forward + backward to show mixed precision runs; then the task heads.
Prints one line per check and exits non-zero if any fp32 difference exceeds the tolerance.

    python benchmarks/cuda_check.py [--size 64] [--tol 1e-3]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import zoo


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    if isinstance(out, (list, tuple)):
        return _first_tensor(out[0])
    raise TypeError(type(out))


def check_model(name: str, size: int, tol: float) -> bool:
    torch.manual_seed(0)
    model = zoo.create_model(name).eval()
    # The model's own ``in_chans``: a 3D LightM-UNet has one channel and no 2D ``input_size`` in its cfg.
    in_chans = getattr(model, "in_chans", None) or (model.pretrained_cfg.get("input_size") or (3,))[0]
    spatial = (32,) * 3 if name.endswith("_3d") else (size, size)  # 48^3 training needs ~24 GB on CPU
    x = torch.randn(2, in_chans, *spatial)
    with torch.no_grad():
        ref = _first_tensor(model(x))
        model_gpu = model.cuda()
        got = _first_tensor(model_gpu(x.cuda())).cpu()
    diff = (ref - got).abs().max().item()
    ok = diff <= tol * max(1.0, ref.abs().max().item())
    model_gpu.train()
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            out = _first_tensor(model_gpu(x.cuda()))
        out.float().mean().backward()
        finite = all(torch.isfinite(p.grad).all() for p in model_gpu.parameters() if p.grad is not None)
        ok &= bool(finite)
        model_gpu.zero_grad(set_to_none=True)
    print(f"{'ok ' if ok else 'BAD'} {name:24s} fp32 max|cpu-cuda| {diff:.2e}  amp bf16/fp16 backward finite")
    return ok


def check_tasks(size: int) -> bool:
    """Each dense and detection task model runs on the GPU; its inputs come from the task's own synthetic batch,
    passed in the task class's ``batch_keys`` order, so no task is special-cased here."""
    from zoo.data.synthetic import synthetic_batch
    from zoo.heads import get_task

    ok = True
    for task, head in (("segmentation", "fpn"), ("detection", "retinanet"), ("change_detection", None)):
        model = zoo.create_model("emov2_1m", task=task, head=head, num_classes=3).cuda().eval()
        batch = synthetic_batch(task, batch_size=1, size=size * 2, num_classes=3)
        inputs = [batch[k] for k in get_task(task).batch_keys]
        inputs = [[t.cuda() for t in x] if isinstance(x, list) else x.cuda() for x in inputs]
        with torch.no_grad():
            out = model(*inputs)
        t = _first_tensor(out)
        print(f"ok  emov2_1m {task:16s} output on {t.device}")
        ok &= t.is_cuda
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(torch.__version__, torch.cuda.get_device_name())
    t0 = time.time()
    results = [check_model(n, a.size, a.tol) for n in zoo.list_models()]
    results.append(check_tasks(a.size))
    print(f"{sum(results)}/{len(results)} checks passed in {time.time() - t0:.0f} s")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
