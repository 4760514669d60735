"""``zoo weights list | fetch | convert``."""

from __future__ import annotations

import argparse
import sys

from ..checkpoint import family_filter_fn, load_state_dict_strict, read_state_dict, save_checkpoint
from ..errors import CheckpointError
from ..manifest import load_manifest
from ..registry import check_model_name, create_timm_model
from . import (
    cached_path,
    copy_to_cache,
    fetch,
    find_entry,
    git_blob_sha1,
    lock_path,
    read_lock,
    sha256_of,
    unpin,
)


def _split(spec: str) -> tuple[str, str | None]:
    """``NAME``, ``NAME:TAG`` or timm's ``NAME.TAG``."""
    sep = ":" if ":" in spec else "."
    name, _, tag = spec.partition(sep)
    return name, tag or None


def _address(entry: dict, pins: dict) -> str:
    """What a download of ``entry`` is checked against, shortened for the table."""
    if entry.get("sha256"):
        return "sha256:" + entry["sha256"][:10]
    if (entry.get("git_blob") or {}).get("sha1"):
        return "git-blob:" + entry["git_blob"]["sha1"][:10]
    pin = pins.get(f"{entry['model']}:{entry['tag']}")
    return "pinned:" + pin["sha256"][:10] if pin else "opt-in"


def _list(args: argparse.Namespace) -> int:
    entries = load_manifest().get("entries", [])
    if args.model:
        entries = [e for e in entries if e["model"] == args.model]
    pins = read_lock()
    print(f"{'timm name':24s} {'classes':>7s} {'input':>9s} {'top1':>5s} {'checked by':20s} {'cached':6s} url")
    for e in entries:
        top1 = "-" if e.get("top1") is None else f"{e['top1']:.1f}"
        size = "x".join(str(s) for s in e["input_size"][1:])
        cached = "yes" if cached_path(e).exists() else "no"
        print(f"{e['model'] + '.' + e['tag']:24s} {e['num_classes']:7d} {size:>9s} {top1:>5s} "
              f"{_address(e, pins):20s} {cached:6s} {e['url']}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    name, tag = _split(args.spec)
    entry = find_entry(name, tag)
    if args.source:
        path = copy_to_cache(entry, args.source)
    else:
        path = fetch(entry, allow_unverified=args.allow_unverified)
    print(path)
    print(f"sha256 {sha256_of(path)}  git-blob {git_blob_sha1(path)}", file=sys.stderr)
    return 0


def _unpin(args: argparse.Namespace) -> int:
    name, tag = _split(args.spec)
    entry = find_entry(name, tag)
    known = unpin(entry)
    print(f"{'forgot' if known else 'no'} pinned sha256 for {name}:{entry['tag']} ({lock_path()})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    """Official file -> our safetensors + sidecar; the strict load proves every key found its place."""
    check_model_name(args.model)
    state = read_state_dict(args.checkpoint)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = create_timm_model(args.model, **kwargs)
    filter_fn = family_filter_fn(model)
    mapped = filter_fn(dict(state), model) if filter_fn else dict(state)
    if args.num_classes is None:
        # Infer the head size from the file so a 45-class release converts without guessing.
        classifier = (model.pretrained_cfg or {}).get("classifier")
        weight = mapped.get(f"{classifier}.weight") if isinstance(classifier, str) else None
        if weight is not None and weight.shape[0] != model.num_classes:
            model = create_timm_model(args.model, num_classes=int(weight.shape[0]))
            mapped = filter_fn(dict(state), model) if filter_fn else dict(state)
    load_state_dict_strict(model, mapped, f"checkpoint {args.checkpoint!r}")
    cfg = model.pretrained_cfg or {}
    out = args.out if args.out.endswith(".safetensors") else args.out + ".safetensors"
    if out == args.checkpoint:
        raise CheckpointError("--out must differ from the input checkpoint")
    save_checkpoint(model, out, {
        "model": args.model, "task": "classification", "num_classes": model.num_classes,
        "in_chans": 3, "input_size": list(cfg.get("input_size", (3, 224, 224))),
        "mean": list(cfg.get("mean", ())), "std": list(cfg.get("std", ())),
        "converted_from": str(args.checkpoint),
    })
    print(f"wrote {out} (+ {out[:-len('.safetensors')]}.json), {model.num_classes} classes")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo weights", description="Pretrained weights from weights_manifest.json.")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("list", help="known weights (as timm names), what a download is checked by, whether cached")
    p.add_argument("model", nargs="?", help="only this model")
    p.set_defaults(func=_list)
    p = sub.add_parser("fetch", help="download (or copy --from a local file) into the cache, checking its hash")
    p.add_argument("spec", help="NAME, NAME:TAG or NAME.TAG, e.g. emov2_5m:in1k_kd")
    p.add_argument("--from", dest="source", help="a local file or file:// URL to use instead of the manifest URL")
    p.add_argument("--allow-unverified", action="store_true",
                   help="fetch an entry without a content address (its sha256 is then pinned in the lock file)")
    p.set_defaults(func=_fetch)
    p = sub.add_parser("unpin", help="forget the sha256 pinned for an entry without a content address")
    p.add_argument("spec", help="NAME, NAME:TAG or NAME.TAG, e.g. lwganet_l0:in1k")
    p.set_defaults(func=_unpin)
    p = sub.add_parser("convert", help="official .pth -> LightZoo .safetensors + JSON sidecar")
    p.add_argument("checkpoint", help="official checkpoint file")
    p.add_argument("--model", required=True, help="our model name, e.g. emov2_5m")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--num-classes", type=int, default=None, help="default: read from the file's classifier")
    p.set_defaults(func=_convert)
    args = parser.parse_args(argv)
    return args.func(args)
