"""Eager CPU latency of the ULSAM MobileNets and PHC ResNets next to their timm peers, measured interleaved.

Each pair (ours, peer) runs alternately in one process (``zoo.bench.interleaved_latency``), so a busy machine slows
both alike and the ratio stays meaningful; absolute times on a shared machine are not.

    python benchmarks/ulsam_phnn.py [--batch 1] [--size 224] [--threads 2] [--rounds 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy

import timm
import torch

import zoo
from zoo.bench import count_macs, count_params, interleaved_latency
from zoo.layers.hypercomplex import materialize_ph_layers

PAIRS = (
    ("mobilenetv1_ulsam", "mobilenetv1_100"),
    ("mobilenetv2_ulsam", "mobilenetv2_100"),
    ("phc_resnet18", "resnet18"),
    ("phc_resnet50", "resnet50"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--only", nargs="*", help="restrict to these of our model names")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CUDA timings synchronise around each call)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(model: torch.nn.Module):
        def call() -> None:
            model(x)
            sync()

        return call

    print(f"{args.device}, batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")
    print("| ours | params | MACs | ms | peer (timm) | params | MACs | ms | ours/peer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ours_name, peer_name in PAIRS:
        if args.only and ours_name not in args.only:
            continue
        ours, peer = zoo.create_model(ours_name).eval(), timm.create_model(peer_name).eval()
        size = (3, args.size, args.size)
        macs = count_macs(ours, size), count_macs(peer, size)
        ours, peer = ours.to(args.device), peer.to(args.device)
        fns = {"ours": timed(ours), "peer": timed(peer)}
        if ours_name.startswith("phc_"):  # also the deployment form: PH layers materialized into real ones
            real = materialize_ph_layers(copy.deepcopy(ours).cpu())
            real_macs = count_macs(real, size)
            fns["materialized"] = timed(real.to(args.device))
        t = interleaved_latency(fns, warmup=3, rounds=args.rounds)
        print(f"| {ours_name} | {count_params(ours) / 1e6:.2f}M | {macs[0] / 1e6:.0f}M | "
              f"{t['ours']:.1f} | {peer_name} | {count_params(peer) / 1e6:.2f}M | {macs[1] / 1e6:.0f}M"
              f" | {t['peer']:.1f} | {t['ours'] / t['peer']:.2f} |", flush=True)
        if "materialized" in t:
            print(f"| {ours_name}, materialized | (PH weights) | {real_macs / 1e6:.0f}M | {t['materialized']:.1f} | "
                  f"{peer_name} | | | {t['peer']:.1f} | {t['materialized'] / t['peer']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
