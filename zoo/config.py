"""Training configuration: a typed schema with defaults, YAML files and dotted ``key=value`` overrides.

Why a schema instead of a free dict: a typo such as ``optim.lrr=0.1`` or ``train.epoch=5`` would otherwise be ignored
silently and the run would train with the default. Every key here is declared with its type and default, so an
unknown key fails at once with the closest valid name, and a value of the wrong type (``train.epochs=ten``) fails
with a message naming the key and the type it needs. ``zoo train`` with no config at all trains the defaults below:
``emov2_1m`` on scikit-learn's digits.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from zoo.errors import ConfigError
from zoo.heads import get_task, task_names


@dataclass
class ModelConfig:
    """Which network to train (any LightZoo or timm name) and how to build it."""

    name: str = "emov2_1m"
    head: str | None = None  # task head (detection: retinanet/fcos/ssdlite/fasterrcnn; segmentation: fpn/...)
    num_classes: int | None = None  # None: taken from the dataset
    in_chans: int | None = None  # None: taken from the dataset
    pretrained: bool | str = False  # True, a weights tag, or False (for task models: the backbone's weights)
    checkpoint: str | None = None  # start from these weights (fine-tuning); not a resume
    kwargs: dict = field(default_factory=dict)  # extra create_model arguments (drop_path_rate, ...)
    freeze: int = 0  # 0: train all; N: freeze the stem and the first N feature stages; -1: the whole backbone


@dataclass
class DataConfig:
    """Where the images come from and how they are batched."""

    dataset: str = "digits"  # digits | folder | synthetic | coco | seg_folder | levir_cd
    root: str | None = None  # dataset folder (not used by digits / synthetic)
    img_size: int = 32  # training and validation resolution (square)
    batch_size: int = 64  # per process
    val_batch_size: int | None = None  # None: 2 x batch_size
    workers: int = 0  # DataLoader worker processes
    val_fraction: float = 0.2  # digits: held-out share (fixed, stratified split)
    train_split: str = "train"
    val_split: str = "val"
    augment: bool = True  # the dataset's training augmentation
    mean: list[float] | None = None  # None: the dataset's own normalisation
    std: list[float] | None = None
    synth: dict = field(default_factory=dict)  # options of the synthetic datasets (num_images, num_classes, ...)


@dataclass
class OptimConfig:
    """Optimizer, built by ``timm.optim.create_optimizer_v2``."""

    opt: str = "adamw"  # any timm optimizer name: adamw, sgd, lamb, ...
    lr: float = 3e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    layer_decay: float | None = None
    clip_grad: float | None = None  # gradient clipping threshold; None: off
    clip_mode: str = "norm"  # norm | value | agc


@dataclass
class SchedConfig:
    """Learning-rate schedule, built by ``timm.scheduler.create_scheduler_v2`` and stepped every update."""

    sched: str = "cosine"  # cosine | step | multistep | plateau | poly | tanh | wsd | none
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    cooldown_epochs: int = 0
    decay_epochs: float | None = None  # step schedules
    decay_rate: float = 0.1


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning: train small added modules on frozen base weights (``zoo.peft``)."""

    method: str = "none"  # none | lora | adapter
    rank: int = 8  # LoRA rank r / adapter bottleneck width
    alpha: float = 16.0  # LoRA scaling alpha (the update is scaled by alpha / rank)
    dropout: float = 0.0  # dropout on the LoRA / adapter input
    target: list[str] = field(default_factory=list)  # module-name globs; []: lora every dense conv/linear of the
    #                                                  backbone, adapter after every backbone stage
    train_norms: bool = False  # also train the backbone's normalisation layers (else frozen, in eval mode)
    train_head: bool = True  # train everything outside the backbone (classifier, decoder, FPN, detection head)


@dataclass
class DistillConfig:
    """Knowledge distillation from a teacher (classification)."""

    teacher: str | None = None  # a LightZoo checkpoint, or a model name with optional weights tag (name:tag)
    type: str = "soft"  # soft: KL on temperature-softened logits | hard: cross-entropy on the teacher's argmax
    weight: float = 0.5  # loss = (1 - weight) * task loss + weight * distillation loss
    temperature: float = 1.0  # soft KD temperature T (the KL term is scaled by T^2)


@dataclass
class TrainConfig:
    """The loop itself: length, precision, regularisation, checkpointing."""

    epochs: int = 12
    accum_steps: int = 1  # gradient accumulation
    amp: str = "off"  # off | bf16 | fp16 | auto (auto: fp16 on CUDA, off on CPU)
    channels_last: bool = False
    ema: bool = False  # timm ModelEmaV3 of the weights, also validated
    ema_decay: float = 0.998
    label_smoothing: float = 0.1  # classification
    mixup: float = 0.0  # classification: mixup alpha (0: off)
    cutmix: float = 0.0  # classification: cutmix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    sync_bn: bool = False  # SyncBatchNorm under DDP (GPU only)
    val_every: int = 1  # validate every N epochs (and always after the last)
    save_every: int = 100  # write the resumable training state every N optimizer steps (0: epoch ends only)
    stop_at_step: int | None = None  # stop (resumably) after this optimizer step; the schedule still spans epochs
    log_every: int = 10  # progress-bar refresh, in steps
    progress: bool = True  # tqdm progress bar on rank 0 (off: one plain line every log_every steps)
    nonfinite: str = "stop"  # a NaN/Inf loss: stop (with the step and likely causes) | skip (drop that update)
    peft: PeftConfig = field(default_factory=PeftConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    qat: bool = False  # int8 quantization-aware fine-tuning (PT2E, XNNPACK scheme; zoo/quantization.py)


@dataclass
class Config:
    """A complete training recipe. ``zoo train`` with no arguments trains these defaults."""

    task: str = "classification"  # classification | detection | segmentation | change_detection
    out_dir: str | None = None  # None: runs/<model>-<dataset>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        """``out_dir``, else ``runs/<model>-<dataset>`` (``-qat`` appended for ``train.qat``, which fine-tunes a
        checkpoint that usually sits in the plain folder)."""
        return Path(self.out_dir or f"runs/{self.model.name}-{self.data.dataset}{'-qat' if self.train.qat else ''}")


CHOICES: dict[str, tuple[str, ...]] = {
    "task": task_names(),  # the registered task classes (zoo.heads)
    "train.amp": ("off", "bf16", "fp16", "auto"),
    "optim.clip_mode": ("norm", "value", "agc"),
    "train.nonfinite": ("stop", "skip"),
    "train.peft.method": ("none", "lora", "adapter"),
    "train.distill.type": ("soft", "hard"),
}


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts (``optim.lr``, ``train.epochs``, ...)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown(key: str, valid: Sequence[str], where: str) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    # a right leaf under the wrong section (``train.lr``) is found by its leaf name first
    close = [k for k in valid if k.rsplit(".", 1)[-1] == leaf][:1]
    if not close:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in valid], n=1, cutoff=0.6)
        close = [k for k in valid if close and k.rsplit(".", 1)[-1] == close[0]][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{where}{hint} (`zoo train --help-config` lists every key)")


def _type_name(t: Any) -> str:
    if t is type(None):
        return "null"
    if typing.get_origin(t) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    if typing.get_origin(t) is list:
        (inner,) = typing.get_args(t) or (Any,)
        return f"a list of {_type_name(inner)}"
    return getattr(t, "__name__", str(t))


def _coerce(key: str, value: Any, t: Any) -> Any:
    """Check ``value`` against the declared type ``t``; convert only where it is lossless (``"1e-3"`` -> float)."""
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(e)
        raise _wrong_type(key, value, t)
    if t is Any:
        return value
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise _wrong_type(key, value, t)
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _wrong_type(key, value, t)
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads ``1e-3`` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _wrong_type(key, value, t)
    if t is str:
        if isinstance(value, str):
            return value
        raise _wrong_type(key, value, t)
    if origin is list or t is list:
        if isinstance(value, (list, tuple)):
            (inner,) = typing.get_args(t) or (Any,)
            return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
        raise _wrong_type(key, value, t)
    if origin is dict or t is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise _wrong_type(key, value, t)
    raise ConfigError(f"{key}: unsupported type {t!r} in the schema")


def _wrong_type(key: str, value: Any, t: Any) -> ConfigError:
    return ConfigError(f"config key {key!r} needs {_type_name(t)}, got {value!r} ({type(value).__name__})")


def _apply(obj: Any, data: Mapping[str, Any], prefix: str, where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<top>'!r}{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise _unknown(key, all_keys(), where)
        t = hints[k]
        if dataclasses.is_dataclass(t):
            _apply(getattr(obj, k), v or {}, key + ".", where)
        else:
            setattr(obj, k, _coerce(key, v, t))


def _validate(cfg: Config) -> None:
    for key, choices in CHOICES.items():
        value = get_key(cfg, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}; got {value!r}{hint}")
    positive = ("data.img_size", "data.batch_size", "train.epochs", "train.accum_steps", "train.log_every",
                "train.val_every")
    for key in positive:
        if get_key(cfg, key) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1; got {get_key(cfg, key)!r}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1; got {cfg.data.val_fraction}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0; got {cfg.optim.lr}")
    for k in ("mean", "std"):
        v = getattr(cfg.data, k)
        if v is not None and not v:
            raise ConfigError(f"data.{k} must list one value per channel (or be null)")
    if (cfg.data.mean is None) != (cfg.data.std is None):
        raise ConfigError("data.mean and data.std go together: set both or neither")
    p = cfg.train.peft
    if p.rank < 1 or p.alpha <= 0 or not 0.0 <= p.dropout < 1.0:
        raise ConfigError(f"train.peft needs rank >= 1, alpha > 0 and 0 <= dropout < 1; got rank={p.rank}, "
                          f"alpha={p.alpha}, dropout={p.dropout}")
    d = cfg.train.distill
    if d.teacher is not None:
        if not get_task(cfg.task).distills_logits:
            raise ConfigError(f"train.distill.teacher distils classification logits; task {cfg.task!r} has none "
                              f"(unset train.distill.teacher)")
        if not 0.0 <= d.weight <= 1.0 or d.temperature <= 0:
            raise ConfigError(f"train.distill needs 0 <= weight <= 1 and temperature > 0; got weight={d.weight}, "
                              f"temperature={d.temperature}")


def get_key(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    """``optim.lr=1e-3`` -> ``("optim.lr", 0.001)``; the value is read as YAML (lists, null, true, numbers)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _yaml12_loader() -> type:
    """A safe YAML loader whose booleans are only ``true`` / ``false`` (YAML 1.2), as ``--help-config`` shows them.

    PyYAML follows YAML 1.1, where ``off``, ``on``, ``yes``, ``no`` (and ``y``/``n`` variants) are booleans, so
    ``train.amp: off`` would arrive as ``False`` and fail as "needs str". Here they stay strings; a key declared
    ``bool`` still accepts them, because the schema converts ``on/off/yes/no`` strings for boolean keys.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader


_LOADER: type | None = None


def yaml_load(text: str) -> Any:
    """Parse YAML text as the config does everywhere (files and overrides): safe, YAML 1.2 booleans."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _yaml12_loader()
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass


def format_value(value: Any) -> str:
    """A value as ``--help-config`` shows it: exactly the text to type after ``key=`` (or in YAML)."""
    import yaml

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return str(value)


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(source: str | Path | Mapping[str, Any] | Config | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Build a validated :class:`Config` from defaults, a YAML file or mapping, then ``key=value`` overrides.

    Raises :class:`zoo.errors.ConfigError` for a missing file, invalid YAML, an unknown key (with the closest valid
    key suggested), a value of the wrong type or out of range.
    """
    import copy

    import yaml

    items = list(overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides))
    if isinstance(source, Config):
        cfg = copy.deepcopy(source)
    else:
        cfg = Config()
        if source is None:
            cfg = _default_recipe(items)
        if isinstance(source, (str, Path)):
            from zoo.resources import list_configs, resolve_config

            path = resolve_config(source)  # a file, or a packaged recipe's name (classification/emov2_1m_digits)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist, nor is it a packaged recipe "
                                  f"({', '.join(list_configs())})")
            try:
                data = yaml_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
            _apply(cfg, data, "", f" in {str(path)!r}")
        elif source is not None:
            _apply(cfg, source, "", "")
    valid = all_keys()
    for key, value in items:
        if key not in valid:
            section = key.split(".", 1)[0]
            if section in {f.name for f in dataclasses.fields(Config)} and key == section:
                raise ConfigError(f"override {key!r} names a section; set a key inside it (e.g. {section}.…)")
            raise _unknown(key, valid, " (override)")
        _apply(cfg, _nest(key, value), "", " (override)")
    _validate(cfg)
    return cfg


#: What ``zoo train`` trains without a config file, on top of the schema defaults. EMOv2's attention pads each map
#: to a multiple of its 7x7 window; at 32x32 input the last two stages are only 2x2 and 1x1, so padding would make
#: them cost as much as at 224x224. ``window_size=0`` (the official "one global window") attends over the whole
#: small map instead: same parameters, a third of the training time.
DEFAULT_RECIPE: dict[str, Any] = {"model": {"name": "emov2_1m", "kwargs": {"window_size": 0}}}


def _default_recipe(items: Sequence[tuple[str, Any]]) -> Config:
    """Schema defaults plus :data:`DEFAULT_RECIPE`, whose model kwargs apply only to its own model."""
    cfg = Config()
    keys = {k for k, _ in items}
    other_model = any(k == "model.name" and v != DEFAULT_RECIPE["model"]["name"] for k, v in items)
    recipe = copy_nested(DEFAULT_RECIPE)
    if other_model or "model.kwargs" in keys:
        recipe["model"].pop("kwargs")
    _apply(cfg, recipe, "", " (default recipe)")
    return cfg


def copy_nested(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: copy_nested(v) if isinstance(v, Mapping) else v for k, v in d.items()}


def key_type(key: str) -> Any:
    """The declared type of a dotted key (``train.amp`` -> ``str``)."""
    section, _, leaf = key.rpartition(".")
    owner = get_key(Config(), section) if section else Config()
    return typing.get_type_hints(type(owner))[leaf]


def describe_keys() -> str:
    """A table of every key with its type, default and choices, for ``zoo train --help-config``.

    Values are shown as they are typed (``off``, ``null``, ``true``), and each works as ``key=value`` and in YAML.
    """
    cfg = Config()
    lines = []
    for key in all_keys():
        t = key_type(key)
        line = f"  {key:<28} {_type_name(t):<22} default {format_value(get_key(cfg, key))}"
        if key in CHOICES:
            line += f"  (one of {' | '.join(CHOICES[key])})"
        lines.append(line)
    return "\n".join(lines)
