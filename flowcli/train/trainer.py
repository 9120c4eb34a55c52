"""Supervised training of the flow network on synthetic scenes, mixed with labelled datasets if given.

Resumable bit for bit: the training state (model, optimiser, schedule, step, every RNG the data
and the model use) is saved every `checkpoint_every` steps and on Ctrl-C, and a restart with the
same config continues from it and produces the same loss curve.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from flowcli.checkpoint import ABSENT, changed_settings, field_defaults, read_metadata, save_checkpoint
from flowcli.console import progress, say, stderr
from flowcli.data.datasets import STEREO_DATASETS, FlowDataset, make_dataset, parse_dataset_spec
from flowcli.data.workers import interrupt_deferred, receiving_batch, start_data_worker
from flowcli.errors import FlowcliError, InputError, OutputError
from flowcli.io.atomic import atomic_path
from flowcli.inference import is_out_of_memory
from flowcli.models.pwc import FlowNet, FlowNetConfig, untie_decoder_weights
from flowcli.synth.generator import SynthConfig, TextureBank, generate_sample, photometric_augment
from flowcli.train.losses import supervised_loss
from flowcli.validation import dataclass_problem, matches_type, value_problem


@dataclass
class TrainConfig:
    out_dir: str = "runs/flow"
    steps: int = 20000
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 1e-4
    pct_start: float = 0.05
    height: int = 320
    width: int = 448
    seed: int = 0
    checkpoint_every: int = 200
    # Score the weights every N steps on `eval_datasets` (or with train()'s `evaluate`); 0: at every checkpoint
    # when `eval_datasets` are given, else never.
    eval_every: int = 0
    eval_datasets: list[str] = field(default_factory=list)  # NAME:ROOT, as `flowcli eval` names them
    # Labelled datasets mixed with the synthetic scenes, as NAME:ROOT or NAME:ROOT:WEIGHT (sintel: both passes,
    # half the weight each): each pair comes from a source with probability proportional to its weight,
    # as a random crop of a random item.
    datasets: list[str] = field(default_factory=list)
    synth_weight: float = 1.0  # the synthetic scenes' weight among the sources; 0: the datasets alone
    stereo_fraction: float = 0.2  # share of purely horizontal (stereo) scenes, so one model serves both
    textures: list[str] = field(default_factory=list)
    robust: bool = False
    clip_grad: float = 10.0
    init_weights: str | None = None  # fine-tune from a checkpoint
    # Parameter-name prefixes to train (e.g. ["upsampler."]); the rest is frozen. Empty: train all.
    train_only: list[str] = field(default_factory=list)
    full_resolution: float = 0.0  # weight of the EPE of the full-resolution flow (learned upsampler)
    # Exponential moving average of the weights, written as ema.safetensors next to last.safetensors;
    # 0 turns it off. The shipped model is an average of checkpoints (docs/training.md); an EMA is
    # such an average taken along the run.
    ema_decay: float = 0.0
    workers: int = 1
    device: str = "auto"  # auto | cpu | cuda | mps; bf16 autocast on GPUs with bf16 in hardware (Ampere on)
    model: dict = field(default_factory=dict)  # FlowNetConfig fields
    synth: dict = field(default_factory=dict)  # SynthConfig overrides

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        """The config of a JSON file, `overrides` (None: keep the file's) on top; InputError naming the
        file and the key when the file is unreadable or a setting is unknown or invalid."""
        path = Path(path)
        try:
            # bytes: json finds the encoding, so a BOM (Notepad) or UTF-16 (PowerShell's `>`) is read as such
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise InputError(f"config file {path} does not exist; check the path") from None
        except IsADirectoryError:
            raise InputError(f"config file {path} is a folder; give a JSON file such as recipes/*.json") from None
        except json.JSONDecodeError as error:
            raise InputError(
                f"config file {path} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read config file {path}: {error}") from None
        if not isinstance(data, dict):
            raise InputError(
                f'config file {path} must hold a JSON object of settings such as {{"steps": 1000}}, '
                f"not {json.dumps(data)[:40]}"
            )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        problem = settings_problem(data, overrides)
        if problem:
            raise InputError(f"config file {path}: {problem}")
        data.update(overrides)
        return cls(**data)

    def check(self) -> None:
        """InputError if a setting is invalid (the Python API can set anything; files and flags are
        checked where they are read, with their names)."""
        problem = settings_problem(asdict(self))
        if problem:
            raise InputError(f"training config: {problem}")


def _positive(value) -> bool:
    return value > 0


def _non_negative(value) -> bool:
    return value >= 0


def _share(value) -> bool:
    return 0 <= value <= 1


_MULTIPLE_OF_64 = (lambda value: value > 0 and value % 64 == 0, "a positive multiple of 64 (e.g. 256)")
# Sample i of the data stream is drawn from torch seed seed * 1_000_003 + i, which must fit in 64 bits.
MAX_SEED = 10**12
# Each TrainConfig field with a range: (test of a well-typed value, what is expected).
_RULES = {
    "out_dir": (bool, "a folder path"),
    "steps": (_positive, "a positive integer"),
    "batch_size": (_positive, "a positive integer"),
    "lr": (_positive, "a positive number (e.g. 0.0004)"),
    "weight_decay": (_non_negative, "a number >= 0"),
    # the one-cycle schedule needs some annealing: at 1 it divides by zero at the very last step
    "pct_start": (lambda value: 0 <= value < 1, "a share of the steps, at least 0 and below 1 (e.g. 0.05)"),
    "height": _MULTIPLE_OF_64,
    "width": _MULTIPLE_OF_64,
    "seed": (lambda value: abs(value) <= MAX_SEED, "an integer between -10^12 and 10^12"),
    "checkpoint_every": (_positive, "a positive integer (steps)"),
    "eval_every": (_non_negative, "an integer >= 0 (0: at each checkpoint with eval_datasets, else never)"),
    "eval_datasets": (None, "a list of NAME:ROOT strings"),  # each spec: _specs_problem
    "datasets": (None, "a list of NAME:ROOT[:WEIGHT] strings"),
    "synth_weight": (_non_negative, "a number >= 0"),
    "stereo_fraction": (_share, "a share between 0 and 1"),
    "textures": (None, "a list of image files, folders of images or videos (strings)"),
    "clip_grad": (_positive, "a positive number"),
    # "" (an unset variable in a generated config) would train from scratch
    "init_weights": (
        lambda value: value is None or bool(value.strip()),
        "a weights name or path (a non-empty string), or null to train from scratch",
    ),
    "train_only": (None, "a list of parameter-name prefixes (strings)"),
    "full_resolution": (_non_negative, "a number >= 0"),
    "ema_decay": (lambda value: 0 <= value < 1, "0 (off) or a decay between 0 and 1 (e.g. 0.999)"),
    "workers": (_non_negative, "an integer >= 0"),
}
# Set by the trainer itself (the stereo share of scenes is `stereo_fraction`).
_TRAINER_SYNTH_FIELDS = ("height", "width", "stereo")


def _specs_problem(specs: list[str], weighted: bool = False) -> str | None:
    for spec in specs:
        try:
            parse_dataset_spec(spec, weighted=weighted)
        except ValueError as error:
            return str(error)
    return None


def setting_problem(name: str, value) -> str | None:
    """What is wrong with one top-level setting ("must be ..., got ..."), or None."""
    hint = typing.get_type_hints(TrainConfig)[name]
    if name in ("datasets", "eval_datasets") and matches_type(value, hint):
        problem = _specs_problem(value, weighted=name == "datasets")
        if problem:
            return problem
    return value_problem(value, hint, _RULES.get(name))


def settings_problem(data: dict, overrides: dict | None = None) -> str | None:
    """The first problem of TrainConfig settings (a config file's, or a config's as a dict), or None.
    `overrides` (the flags, checked on their own) take part in the rules between settings only, as in
    "synth_weight" 0 with the datasets of --dataset."""
    combined = {**data, **(overrides or {})}
    for name in ("datasets", "eval_datasets"):  # the spec's own problem, not only "must be a list of ..."
        if matches_type(data.get(name, []), list[str]):
            problem = _specs_problem(data.get(name, []), weighted=name == "datasets")
            if problem:
                return f'"{name}": {problem}'
    problem = dataclass_problem(TrainConfig, data, rules=_RULES)
    if problem:
        return problem
    if combined.get("synth_weight") == 0 and not combined.get("datasets"):
        return '"synth_weight" 0 leaves nothing to train on; give "datasets" or a positive synth_weight'
    model, synth = data.get("model", {}), data.get("synth", {})
    for name in _TRAINER_SYNTH_FIELDS:
        if name in synth:
            top = "stereo_fraction" if name == "stereo" else name
            return f'"synth.{name}": set by the trainer; use the top-level "{top}" instead'
    problem = dataclass_problem(FlowNetConfig, model, prefix="model.") or dataclass_problem(
        SynthConfig, synth, prefix="synth.", exclude=_TRAINER_SYNTH_FIELDS
    )
    if problem:
        return problem
    try:
        SynthConfig(**synth)
    except ValueError as error:
        return f'"synth": {error}'
    if not combined.get("init_weights"):  # with init weights, `model` overrides the checkpoint's config
        try:
            FlowNetConfig(**model)
        except ValueError as error:
            return f'"model": {error}'
    return None


def load_datasets(specs: list[str]) -> list[tuple[FlowDataset, float]]:
    """The labelled training sources of `datasets` specs: (reader, weight), chairs' training split;
    InputError naming the spec when a folder does not hold the dataset."""
    sources = []
    for spec in specs:
        try:
            parsed = parse_dataset_spec(spec, weighted=True)
        except ValueError as error:
            raise InputError(f"datasets: {error}") from None
        for name, root, weight in parsed:
            split = {"split": "training"} if name == "chairs" else {}
            try:
                reader = make_dataset(name, root, **split)
            except InputError as error:
                raise InputError(f"datasets {spec!r}: {error}") from None
            sources.append((reader, weight))
    return sources


def random_crop(item: dict, height: int, width: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(image1, image2, flow, valid) of a labelled item cut to height x width at a random place; an item
    smaller than that is padded, and the padding has no ground truth (valid False)."""
    image1, image2, flow, valid = item["image1"], item["image2"], item["flow"], item["valid"]
    h, w = image1.shape[-2:]
    if h < height or w < width:
        pad = (0, max(width - w, 0), 0, max(height - h, 0))
        image1, image2, flow = (F.pad(t, pad) for t in (image1, image2, flow))
        valid = F.pad(valid.to(torch.uint8), pad).bool()
        h, w = image1.shape[-2:]
    top = int(torch.randint(h - height + 1, (), generator=gen))
    left = int(torch.randint(w - width + 1, (), generator=gen))
    window = (..., slice(top, top + height), slice(left, left + width))
    return tuple(t[window].contiguous() for t in (image1, image2, flow, valid))


def augment_labelled(
    pair: tuple[torch.Tensor, ...], gen: torch.Generator, *, flip: bool, noise_std: float
) -> tuple[torch.Tensor, ...]:
    """The synthetic scenes' colour jitter and noise on a labelled crop, and (`flip`) a mirror half the time:
    flow is mirrored with its x component negated. Stereo pairs are not mirrored: left -> right flow is
    (-disparity, 0), and a mirrored pair would move the other way."""
    image1, image2, flow, valid = pair
    image1, image2 = photometric_augment([image1, image2], gen, noise_std)
    if flip and float(torch.rand((), generator=gen)) < 0.5:
        image1, image2, flow, valid = (t.flip(-1) for t in (image1, image2, flow, valid))
        flow = flow * torch.tensor([-1.0, 1.0]).view(2, 1, 1)
    return image1, image2, flow, valid


class SynthStream(torch.utils.data.IterableDataset):
    """An endless, seeded stream of training pairs (image1, image2, flow, valid): synthetic scenes, and random
    crops of the labelled `datasets` when the config has them.

    Sample i is drawn from seed (base_seed, i), so the stream can restart at any index and
    reproduce exactly what an uninterrupted run would have seen.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        start_index: int,
        textures: TextureBank | None = None,
        datasets: list[tuple[FlowDataset, float]] | None = None,
    ):
        self.cfg, self.start_index, self.textures = cfg, start_index, textures
        self.flow_cfg = SynthConfig(height=cfg.height, width=cfg.width, **cfg.synth)
        self.stereo_cfg = SynthConfig(height=cfg.height, width=cfg.width, stereo=True, **cfg.synth)
        self.datasets = datasets or []
        weights = [cfg.synth_weight] + [weight for _, weight in self.datasets]
        self.source_weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None:  # a data worker: leave the cores to the training step
            torch.set_num_threads(1)
        # The DataLoader takes whole batches from its workers in turn, so worker k of n makes batches k, k + n, ...:
        # the batches are the same, in the same order, whatever the number of workers.
        first, every = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        size = self.cfg.batch_size
        for batch in itertools.count(first, every):
            for index in range(self.start_index + batch * size, self.start_index + (batch + 1) * size):
                yield self.sample(index)

    def sample(self, index: int) -> tuple[torch.Tensor, ...]:
        """Sample `index` of the stream: (image1, image2, flow, valid)."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index)
        if self.datasets:  # (without datasets no source is drawn: synthetic-only runs keep their stream)
            source = int(torch.multinomial(self.source_weights, 1, generator=gen))
            if source > 0:
                reader = self.datasets[source - 1][0]
                item = reader[int(torch.randint(len(reader), (), generator=gen))]
                for _ in range(8):  # a crop without ground truth (KITTI's sky) teaches nothing: try elsewhere
                    crop = random_crop(item, self.cfg.height, self.cfg.width, gen)
                    if crop[3].any():
                        break
                stereo = reader.name in STEREO_DATASETS
                return augment_labelled(crop, gen, flip=not stereo, noise_std=self.flow_cfg.noise_std)
        stereo = float(torch.rand((), generator=gen)) < self.cfg.stereo_fraction
        s = generate_sample(self.stereo_cfg if stereo else self.flow_cfg, gen, self.textures)
        valid = torch.ones(1, self.cfg.height, self.cfg.width, dtype=torch.bool)
        if not stereo and float(torch.rand((), generator=gen)) < 0.5:  # train on both directions
            return s.images[1], s.images[0], s.flow_backward, valid
        return s.images[0], s.images[1], s.flow_forward, valid


def _batches(
    cfg: TrainConfig, step: int, textures: TextureBank | None, datasets: list[tuple[FlowDataset, float]] | None = None,
    pin_memory: bool = False,
) -> Iterator:
    """`pin_memory` (training on CUDA): page-locked batches, which the step copies to the GPU without waiting."""
    stream = SynthStream(cfg, start_index=step * cfg.batch_size, textures=textures, datasets=datasets)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if cfg.workers else None,
        worker_init_fn=start_data_worker if cfg.workers else None,
    )
    return iter(loader)


def build_model(cfg: TrainConfig) -> tuple[FlowNet, str | None]:
    """(model, sha256 of the init checkpoint or None): a fresh model, or `init_weights` with `model`
    overrides that may add modules (a new upsampler) or untie a shared decoder (copied to every level).

    Added modules keep their initialisation; anything else missing or left over is an error.
    """
    torch.manual_seed(cfg.seed)
    if not cfg.init_weights:
        return FlowNet(FlowNetConfig(**cfg.model)), None
    from flowcli.models import load_model_and_file

    base, _, init_sha256 = load_model_and_file(cfg.init_weights, "cpu")
    if not cfg.model:
        return base.train(), init_sha256
    try:
        model = FlowNet(FlowNetConfig(**{**base.config.to_dict(), **cfg.model}))
    except (TypeError, ValueError) as error:  # an unknown key or a bad value in the "model" overrides
        raise InputError(f'"model" overrides {cfg.model} do not make a valid model: {error}') from None
    base_state = base.state_dict()
    if base.config.shared_decoder and not model.config.shared_decoder:
        base_state = untie_decoder_weights(base_state, model.config.decoded_levels)
    model_state = model.state_dict()
    added = {name.split(".")[0] for name in model_state} - {name.split(".")[0] for name in base_state}
    resized = [name for name, value in base_state.items()
               if name in model_state and model_state[name].shape != value.shape]  # fmt: skip
    if resized:  # load_state_dict(strict=False) still fails on these, with a page of tensor shapes
        first = resized[0]
        raise InputError(
            f'"model" overrides {cfg.model} do not fit {cfg.init_weights}: {len(resized)} tensors change shape '
            f"(e.g. {first}: {tuple(base_state[first].shape)} -> {tuple(model_state[first].shape)}); leave out the "
            "overrides of layer sizes, or train without --init"
        )
    result = model.load_state_dict(base_state, strict=False)
    stray = result.unexpected_keys + [k for k in result.missing_keys if k.split(".")[0] not in added]
    if stray:
        raise InputError(f"model overrides {cfg.model} do not fit {cfg.init_weights}: {stray[:4]}")
    return model.train(), init_sha256


def trainable_parameters(model: torch.nn.Module, train_only: list[str]) -> list[torch.nn.Parameter]:
    """Freeze every parameter outside the `train_only` prefixes (all train when it is empty)."""
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(not train_only or name.startswith(tuple(train_only)))
        if param.requires_grad:
            params.append(param)
    if not params:
        raise InputError(f"train_only {train_only} matches no parameter of the model; give prefixes of its "
                         "parameter names, e.g. [\"upsampler.\"]")
    return params


class WeightEMA:
    """An exponential moving average of a model's weights, kept as a frozen copy of the model.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a run from scratch does
    not carry its random initialisation for thousands of steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise FlowcliError(f"--ema-decay {decay} must be between 0 and 1 (e.g. 0.999), or 0 for none")
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for averaged, current in zip(self.model.state_dict().values(), model.state_dict().values()):
            if averaged.is_floating_point():
                averaged.lerp_(current.detach(), 1.0 - decay)
            else:
                averaged.copy_(current)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _load_textures(cfg: TrainConfig) -> TextureBank | None:
    """The texture images, loaded in this process rather than in the data workers (which inherit or
    share them), so a missing or unreadable texture is a one-line error, not a worker's traceback."""
    if not cfg.textures:
        return None
    try:
        return TextureBank.from_paths([Path(path).expanduser() for path in cfg.textures])
    except FlowcliError as error:
        raise InputError(f"textures: {error}") from None


def _check_run_folder(out: Path, overwrite: bool) -> None:
    """OutputError if `out` is a file, or holds weights without a state to resume (a finished or
    foreign run), or a config.json or eval.json that flowcli train did not write, and `overwrite` is off."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file, not a run folder; choose another --out")
    if overwrite or (out / "state.pt").exists():
        return
    for name in ("last.safetensors", "ema.safetensors"):
        if (out / name).exists():
            raise OutputError(
                f"{out / name} already exists and {out} has no state.pt to resume; "
                "pass --overwrite to replace it or choose another --out"
            )
    # A run stopped by an error before its first checkpoint leaves these two without a state.pt: they are
    # replaced; files of the same names of anything else are not.
    for name, is_ours in (("config.json", _is_train_config), ("eval.json", _is_evaluations)):
        path = out / name
        if os.path.lexists(path) and not is_ours(path):
            raise OutputError(
                f"{path} already exists and is not a flowcli train file; pass --overwrite to replace it or "
                "choose another --out"
            )


def _json_of(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def _is_train_config(path: Path) -> bool:
    """Whether `path` holds a training config: a JSON object of TrainConfig settings (as train writes it)."""
    data = _json_of(path)
    return isinstance(data, dict) and set(data) <= {f.name for f in fields(TrainConfig)}


def _is_evaluations(path: Path) -> bool:
    """Whether `path` holds a run's evaluations, as `_write_evaluations` writes them."""
    data = _json_of(path)
    return isinstance(data, list) and all(isinstance(record, dict) and "step" in record for record in data)


_STATE_KEYS = ("config", "model", "optimizer", "scheduler", "rng", "step", "history")


def _load_state(state_path: Path, overwrite: bool) -> dict | None:
    """The saved training state, or None when there is none (or, with `overwrite`, when it is unreadable);
    OutputError, as for the run folder's other files, when it cannot be read or is not a flowcli training state."""
    if not state_path.exists():
        return None
    try:
        # on the CPU: load_state_dict moves the weights and moments to the parameters' device and keeps AdamW's
        # step counts on the CPU, where a step counter on the GPU would cost a sync per parameter every step
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or not made by flowcli train
        problem = f"is not a readable training state ({str(error).splitlines()[0][:120]})"
    else:
        missing = [key for key in _STATE_KEYS if key not in state] if isinstance(state, dict) else list(_STATE_KEYS)
        problem = f"is not a flowcli training state (no {', '.join(missing)})" if missing else None
        if not missing and "model_config" in state:
            try:
                _state_model_config(state)
            except (TypeError, ValueError, RecursionError) as error:  # (json's errors are ValueErrors)
                problem = f"records a model this flowcli cannot build ({str(error)[:120]})"
        if problem is None:
            return state
    if overwrite:
        say(f"replacing the run in {state_path.parent} ({state_path.name} {problem}, --overwrite)")
        return None
    raise OutputError(f"{state_path} {problem}; pass --overwrite to start the run afresh, or choose another --out")


def _state_model_config(state: dict) -> FlowNetConfig:
    """The architecture of the model a saved state trains (states saved since it is recorded)."""
    return FlowNetConfig(**json.loads(state["model_config"]))


# Settings that say where and how often a run is saved or evaluated, never what it computes: a run resumes
# with new values of them (which apply from then on). out_dir: wherever the run folder is now, however spelt;
# eval_every, eval_datasets: evaluation runs the model in eval mode and draws no number from the global RNG.
# Not `workers`: a data worker generates with 1 thread, the main process (workers 0) with all of them.
_FREE_ON_RESUME = ("out_dir", "checkpoint_every", "eval_every", "eval_datasets")


def _changed_settings(saved_config: str, cfg: TrainConfig) -> list[str]:
    """The settings of `cfg` that differ from those a saved state was made with and change the result
    ("name: saved -> now", nested ones as "synth.name"); empty when the state resumes under `cfg`."""

    def shown(value) -> str:
        text = "(unset)" if value is ABSENT else json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."

    changed = []
    settings = changed_settings(json.loads(saved_config), asdict(cfg), field_defaults(TrainConfig))
    for name, (before, now) in settings.items():
        if name in _FREE_ON_RESUME:
            continue
        if isinstance(before, dict) and isinstance(now, dict):
            changed += [
                f"{name}.{key}: {shown(before.get(key, ABSENT))} -> {shown(now.get(key, ABSENT))}"
                for key in sorted(set(before) | set(now))
                if before.get(key, ABSENT) != now.get(key, ABSENT)
            ]
        else:
            changed.append(f"{name}: {shown(before)} -> {shown(now)}")
    return changed


def _schedule(optimizer, cfg: TrainConfig):
    if cfg.steps < 10:  # too short for a warm-up and an annealing phase
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=max(cfg.pct_start, 3.0 / cfg.steps),
        anneal_strategy="cos", cycle_momentum=False,
    )


def _weight_hint(spec: str, root: str) -> str:
    """A hint for an evaluation spec given a weight as for `datasets` (chairs:FOLDER:2, whose root reads
    "FOLDER:2" where FOLDER is a folder and "FOLDER:2" is not), else ""."""
    head, _, tail = root.rpartition(":")
    try:
        float(tail)
    except ValueError:
        return ""
    if not head or Path(root).expanduser().is_dir() or not Path(head).expanduser().is_dir():
        return ""
    return f"; evaluations take no weight (--eval NAME:ROOT): give {spec.rpartition(':')[0].strip()!r}"


def dataset_evaluator(specs: list[str]) -> Callable[[torch.nn.Module], dict]:
    """An `evaluate` for train(): `flowcli eval` on each NAME:ROOT spec, {"DATASET epe": ..., "DATASET fl_all": ...}
    (EPE, and Fl-all for flow, D1 for stereo); every folder is checked now, so a wrong one fails before training."""
    from flowcli.evaluation import headline_metrics

    sets = []
    for spec in specs:
        try:
            parsed = parse_dataset_spec(spec)
        except ValueError as error:
            raise InputError(f"eval_datasets: {error}") from None
        for name, root, _ in parsed:
            try:
                make_dataset(name, root)
            except InputError as error:
                raise InputError(f"eval_datasets {spec!r}: {error}{_weight_hint(spec, root)}") from None
            sets.append((name, root))

    def scores(model: torch.nn.Module) -> dict:
        metrics = headline_metrics(model, sets, occlusion=False)  # on the model's device
        return {f"{name} {key}": value for name, by_key in metrics.items() for key, value in by_key.items()
                if key in ("epe", "fl_all", "d1")}  # fmt: skip

    return scores


def train(
    cfg: TrainConfig,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Run (or resume) training; returns a summary. `stop_after` ends early (tests, budgets).
    `evaluate` (default: `flowcli eval` on `cfg.eval_datasets`) scores the weights every `eval_every` steps.

    A run folder holding a state of the same config resumes; one of another config, or with weights
    and no state, is refused unless `overwrite`, which starts afresh. Settings that cannot change the
    loss curve or the weights (`checkpoint_every`, `eval_every`, `out_dir`) may differ on resume: the
    new values apply.
    """
    cfg.check()
    if stop_after is not None and stop_after < 1:
        raise InputError(f"--stop-after must be a positive step number, got {stop_after}")
    out = Path(cfg.out_dir).expanduser()  # as the dataset roots and --init: "~/runs" made a folder named "~" here
    state_path = out / "state.pt"
    _check_run_folder(out, overwrite)
    textures = _load_textures(cfg)
    datasets = load_datasets(cfg.datasets)
    from flowcli.inference import native_bf16, resolve_device

    # the device and the model (init weights, overrides) are checked before the run folder is made
    device = resolve_device(cfg.device)
    if evaluate is None and cfg.eval_datasets:
        evaluate = dataset_evaluator(cfg.eval_datasets)
    eval_every = cfg.eval_every or (cfg.checkpoint_every if cfg.eval_datasets else 0)
    autocast = native_bf16(device)  # elsewhere (most CPUs, GPUs before Ampere) bf16 is slower than fp32
    torch.manual_seed(cfg.seed)
    state = _load_state(state_path, overwrite)
    changed = _changed_settings(state["config"], cfg) if state is not None else []
    if changed and not overwrite:
        shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise OutputError(
            f"{state_path} was made with a different training config ({shown}); use the same settings "
            "(checkpoint_every, eval_every and eval_datasets may change), another --out, or --overwrite to start "
            "afresh"
        )
    if state is not None and not changed and "model_config" in state:
        # the architecture the run recorded: its init file may be gone or hold other weights since, and the
        # state holds every weight
        model, init_sha256 = FlowNet(_state_model_config(state)), state.get("init_sha256")
    else:  # a fresh run, or a state of an older flowcli (no model_config): from init_weights, as then
        model, init_sha256 = build_model(cfg)
    multiple = model.config.size_multiple
    if cfg.height % multiple or cfg.width % multiple:  # (the model's forward refuses such a crop at the first step)
        raise InputError(
            f"the training crop {cfg.height}x{cfg.width} (--size, or height and width in a config) must be a "
            f"multiple of {multiple} for this model's {model.config.num_levels} pyramid levels, e.g. "
            f"{-(-cfg.height // multiple) * multiple}x{-(-cfg.width // multiple) * multiple}"
        )
    model = model.to(device)
    params = trainable_parameters(model, cfg.train_only)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the run folder {out}: {error.strerror}; choose another --out") from None
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _schedule(optimizer, cfg)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None
    step, history = 0, []
    if changed:
        say(f"replacing the run in {out} (another config, --overwrite)")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"].cpu())
        step, history = state["step"], json.loads(state["history"])
        # the init file may have changed since (a run that went on): the provenance names the one this run started from
        init_sha256 = state.get("init_sha256", init_sha256)
        say(f"resuming {out} at step {step}/{cfg.steps}")
    else:  # an earlier run's evaluations and average are not this run's
        for stale in [out / "eval.json"] + ([out / "ema.safetensors"] if ema is None else []):
            if stale.is_symlink() or not stale.is_dir():  # (a folder of that name is refused where it is written)
                stale.unlink(missing_ok=True)
    with atomic_path(out / "config.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(asdict(cfg), indent=2))

    def save_state():
        with atomic_path(state_path, overwrite=True) as tmp:
            torch.save(
                {
                    "config": json.dumps(asdict(cfg), sort_keys=True),
                    "model_config": json.dumps(model.config.to_dict()),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "step": step,
                    "history": json.dumps(history),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    **({"init_sha256": init_sha256} if init_sha256 is not None else {}),
                },
                tmp,
            )
        provenance = _provenance(cfg, step, history, init_sha256)
        save_checkpoint(model, out / "last.safetensors", provenance=provenance)
        if ema is not None:
            provenance = {**provenance, "weights": f"exponential moving average, decay {cfg.ema_decay}"}
            save_checkpoint(ema.model, out / "ema.safetensors", provenance=provenance)

    def evaluation_due() -> bool:  # the final weights too, when the steps are no multiple of eval_every (or fewer)
        return bool(eval_every) and evaluate is not None and (step % eval_every == 0 or step == cfg.steps)

    def run_evaluation():
        evaluated = ema.model if ema is not None else model  # the weights a user would take
        evaluated.eval()
        metrics = evaluate(evaluated)
        evaluated.train()
        history[-1]["eval"] = metrics
        _write_evaluations(out / "eval.json", history)
        say(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))

    end = min(cfg.steps, stop_after if stop_after is not None else cfg.steps)
    saved = step if state is not None else -1  # the step whose state is on disk
    model.train()
    batches = _batches(cfg, step, textures, datasets, pin_memory=device.type == "cuda")
    started = time.time()
    try:
        if history and evaluation_due() and "eval" not in history[-1]:
            # a Ctrl-C during this step's evaluation saved the step without it
            run_evaluation()
            with interrupt_deferred():
                save_state()
        with progress(quiet) as bar:
            task = bar.add_task("training", total=cfg.steps, completed=step, info="")
            while step < end:
                with receiving_batch(cfg.workers):
                    batch = next(batches)
                image1, image2, flow, valid = (t.to(device, non_blocking=True) for t in batch)
                valid = None if bool(valid.all()) else valid  # (an all-valid batch: the plain mean, as ever)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    output = model(image1, image2)
                output.flow = output.flow.float()
                output.level_flows = {k: v.float() for k, v in output.level_flows.items()}
                terms = supervised_loss(
                    output, flow, valid, robust=cfg.robust, full_resolution=cfg.full_resolution
                )
                _check_finite(terms["total"], "loss", step, saved, out)
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                _check_finite(torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad), "gradient norm", step, saved, out)
                with interrupt_deferred():  # a Ctrl-C lands before or after a whole step, never inside
                    optimizer.step()
                    scheduler.step()
                    if ema is not None:
                        ema.update(model)
                    step += 1
                    record = {"step": step, **{k: round(float(v.detach()), 5) for k, v in terms.items()}}
                    record["lr"] = scheduler.get_last_lr()[0]
                    history.append(record)
                bar.update(task, completed=step, info=f"loss {record['total']:.3f} epe {record['epe']:.2f}")
                if not stderr.is_terminal and not quiet and step % 10 == 0:  # a log file gets plain lines
                    say(f"step {step}/{cfg.steps} loss {record['total']:.4f} epe {record['epe']:.3f}")
                if evaluation_due():
                    run_evaluation()
                if step % cfg.checkpoint_every == 0 or step == end:
                    with interrupt_deferred():
                        save_state()
                        saved = step
    except RuntimeError as error:  # (torch's out-of-memory errors are RuntimeErrors, a data worker's too)
        if not is_out_of_memory(error):
            raise
        then = (
            f"start afresh with --overwrite ({out} keeps the state of step {saved})"
            if saved >= 0
            else "run again (nothing was saved)"
        )
        raise FlowcliError(
            f"out of memory at step {step + 1} (batch size {cfg.batch_size}, crops of {cfg.height}x{cfg.width}, "
            f"on {device}); lower --batch-size or --size and {then}"
        ) from None
    except KeyboardInterrupt:
        if saved != step:
            try:
                with interrupt_deferred():
                    save_state()
            except KeyboardInterrupt:  # a second Ctrl-C while saving: the state is saved all the same
                pass
        raise FlowcliError(
            f"interrupted at step {step}; state saved in {state_path}. Run the same command again to resume."
        ) from None
    finally:
        del batches  # the data workers are shut down now, not at exit after the message (see receiving_batch)
    weights = [out / "last.safetensors"] + ([out / "ema.safetensors"] if ema is not None else [])
    lost = [path for path in weights if not _readable_weights(path)]
    if lost:  # a finished run whose weights were deleted or cut short since: written again from its state
        with interrupt_deferred():
            save_state()
        say(f"wrote {', '.join(map(str, lost))} again from {state_path} (missing or unreadable)")
    return {
        "steps": step,
        "seconds": time.time() - started,
        "final_loss": history[-1]["total"] if history else None,
        "checkpoint": str(out / "last.safetensors"),
        "ema_checkpoint": str(out / "ema.safetensors") if ema is not None else None,
        "history": history,
    }


def _readable_weights(path: Path) -> bool:
    try:
        read_metadata(path)
    except (FlowcliError, OSError):
        return False
    return True


def _check_finite(value: torch.Tensor, what: str, step: int, saved: int, out: Path) -> None:
    """Stop a diverged run before its weights turn NaN (which every later step would keep, and no flowcli
    command loads): checked before the optimiser step, so the run folder keeps the last saved state."""
    value = value.detach()
    if bool(torch.isfinite(value)):
        return
    if saved >= 0:
        kept = f"{out} keeps the state of step {saved}; lower --lr and start afresh with --overwrite"
    else:
        kept = "nothing was saved; lower --lr and run again"
    raise FlowcliError(f"training diverged: the {what} is {float(value)} at step {step + 1}; {kept}")


def _write_evaluations(path: Path, history: list[dict]) -> None:
    """OUT/eval.json: every evaluation of the run so far, [{"step": N, "DATASET epe": ...}, ...]."""
    records = [{"step": record["step"], **record["eval"]} for record in history if "eval" in record]
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(records, indent=1))


def _training_data(cfg: TrainConfig) -> str:
    synthetic = "flowcli synthetic scenes" + (f" with textures from {cfg.textures}" if cfg.textures else "")
    if not cfg.datasets:
        return synthetic
    sources = ([f"{synthetic} (weight {cfg.synth_weight:g})"] if cfg.synth_weight else []) + [
        f"{name} {root} (weight {weight:g})"
        for spec in cfg.datasets
        for name, root, weight in parse_dataset_spec(spec, weighted=True)
    ]
    return "; ".join(sources)


def _provenance(cfg: TrainConfig, step: int, history: list[dict], init_sha256: str | None) -> dict:
    recent = history[-50:]
    provenance = {
        "trained_by": "flowcli train",
        "data": _training_data(cfg),
        "steps": step,
        "batch_size": cfg.batch_size,
        "crop": [cfg.height, cfg.width],
        **({"stereo_fraction": cfg.stereo_fraction} if cfg.synth_weight else {}),
        "recent_epe": round(sum(r["epe"] for r in recent) / max(len(recent), 1), 4) if recent else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    if cfg.init_weights:
        provenance["init_weights"] = cfg.init_weights
        provenance["init_sha256"] = init_sha256
    if cfg.train_only:
        provenance["trained_parameters"] = cfg.train_only
    return provenance
