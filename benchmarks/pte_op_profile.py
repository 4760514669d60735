"""Where an ExecuTorch ``.pte`` spends its time, per XNNPACK operator class, fp32 next to int8.

The ``.pte`` files run in the ExecuTorch runtime with ETDump profiling on (``enable_etdump``) and
``executorch.devtools.Inspector`` reads the per-operator events: XNNPACK names each kernel by operator and data type
("Convolution (NHWC, QC8) DWConv #3"), so dropping the instance number gives one row per operator class, and
portable (non-delegated) kernels appear as ``native_call_*``. This is the measurement behind the int8 ``.pte``
operator selection (``export.pte_select``): an operator class slower in int8 than in float is worth keeping float.

Batch 1, ``--threads`` XNNPACK threads, probe weights (``export.probe``) and synthetic calibration: speed only.
Times are per run, averaged over ``--runs`` runs; profiling adds a little per operator, so totals sit slightly
above ``benchmarks/int8_speed.py``'s.

    python benchmarks/pte_op_profile.py emov2_5m                       # fp32 / int8 all / int8 auto, 224²
    python benchmarks/pte_op_profile.py lwganet_l0 --float-kinds depthwise
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from pathlib import Path

import torch
from zoo.export.benchmark import cpu_description
from zoo.export.calib import synthetic_calibration
from zoo.export.executorch import to_pte
from zoo.export.metadata import preprocessing
from zoo.export.probe import make_informative
from zoo.export.pt2e import to_pte_int8
from zoo.export.spec import build_spec

import zoo


def operator_times(path: Path, example: torch.Tensor, runs: int, threads: int
                   ) -> tuple[dict[str, float], dict[str, int]]:
    """Mean ms per run of each operator class in ``path`` (ETDump events, instance numbers dropped), and how many
    calls of it one run makes."""
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    module = portable_lib._load_for_executorch(str(path), enable_etdump=True)
    for _ in range(runs):
        module.forward([example])
    etdump = path.with_suffix(".etdp")
    module.write_etdump_result_to_file(str(etdump))
    totals: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for block in Inspector(etdump_path=str(etdump)).event_blocks:
        for event in block.events:
            if event.perf_data is not None and not event.name.startswith(("Program::", "Method::init")):
                name = re.sub(r" #\d+$", "", event.name)
                totals[name] += sum(event.perf_data.raw) / runs
                calls[name] += len(event.perf_data.raw) // runs
    return dict(totals), dict(calls)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--float-kinds", help="comma-separated kinds the third file keeps in float (default: auto)")
    p.add_argument("--top", type=int, default=25, help="rows to print")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; int8-relevant flags: {', '.join(cpu['int8_flags']) or 'none'}; "
          f"{args.threads} thread(s), batch 1, {args.size}², mean of {args.runs} runs")
    model = zoo.create_model(args.model).eval()
    pre = preprocessing(model)
    shape = (pre["default_input_size"][0], args.size, args.size)
    make_informative(model, shape)
    spec = build_spec("classification", shape, False, model)
    calib = synthetic_calibration(shape, 1, 16, pre["mean"], pre["std"])
    kinds = [k for k in (args.float_kinds or "").split(",") if k]
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32": to_pte(model, Path(tmp) / "fp32.pte", spec),
                 "int8 all": to_pte_int8(model, Path(tmp) / "all.pte", spec, calib,
                                         calibration_source="synthetic").path}
        third = to_pte_int8(model, Path(tmp) / "third.pte", spec, calib, calibration_source="synthetic",
                            select="auto", float_kinds=kinds or None, threads=args.threads)
        files[f"int8 float:{'+'.join(sorted(third.selection.float_kinds)) or 'none'}"] = third.path
        print(third.selection.summary())
        example = torch.from_numpy(calib[0][:1])
        profiles = {k: operator_times(f, example, args.runs, args.threads) for k, f in files.items()}
    times = {k: t for k, (t, _) in profiles.items()}
    names = sorted({n for t in times.values() for n in t}, key=lambda n: -max(t.get(n, 0.0) for t in times.values()))
    cols = list(times)
    print("\n| operator class | " + " | ".join(f"{c} ms (calls)" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for n in names[: args.top]:
        print(f"| {n} | " + " | ".join(f"{times[c].get(n, 0.0):.3f} ({profiles[c][1].get(n, 0)})" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
