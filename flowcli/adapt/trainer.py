"""`adapt(cfg)`: self-supervised fine-tuning of a flow model on a user's own unlabeled footage.

Two stages, as in DDFlow / SelFlow / DistillFlow:
1. photometric: census + SSIM + L1 with occlusion masking (forward-backward, or the range map) and
   edge-aware smoothness, multi-scale (flowcli.adapt.losses), on random crops of the footage;
2. distillation: the model as it is at the end of stage 1, frozen (plus any `--teacher`
   checkpoints, and flipped inputs with `teacher_flip`), predicts flow and occlusion on a window of
   the frames; the student sees a transformed crop of that window (crop, superpixel noise, colour,
   zoom/rotation/flip; flowcli.adapt.transforms) and learns the teacher's confident flow where the
   view occluded or changed the pixels, next to the photometric loss on its own view.
The split between the stages follows the footage size (`plan_stages`). Stereo (`cfg.stereo`) runs
stage 1 only, with the horizontal constraint and, on stereo video, Flow2Stereo's constraints.
With `losses["anchor"]` > 0 every step of both stages also carries `anchor_pairs` synthetic scenes
(flowcli.synth, textured with frames of the training slice) supervised by their exact flow: replay
that keeps a supervised base from drifting where the photometric loss is blind.

Resumable like flowcli.train: the state (model, optimiser, teacher, plan, history, before-metrics)
is saved in `<output stem>.adapt/state.pt` every `checkpoint_every` steps and on Ctrl-C, and the
same command continues from it with the same batches (each step's batch is drawn from seeds derived
from (seed, step, rank)). Multi-GPU: launch with torchrun; WORLD_SIZE > 1 selects
DistributedDataParallel with the pairs sharded by torch's DistributedSampler.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from flowcli.adapt.footage import Footage, scan_footage
from flowcli.adapt.losses import (
    LossWeights,
    PairFlows,
    StereoVideo,
    adapt_loss,
    fb_occlusion,
)
from flowcli.adapt.report import heldout_metrics, parse_gt
from flowcli.adapt.teacher import freeze, teacher_predictions
from flowcli.adapt.transforms import (
    TransformConfig,
    flip_and_reverse,
    make_student_view,
    random_crop,
    sample_view,
    teacher_targets,
)
from flowcli.checkpoint import changed_settings, field_defaults, save_checkpoint
from flowcli.console import print_error, progress, say, stderr, warn
from flowcli.data.workers import interrupt_deferred, receiving_batch, start_data_worker
from flowcli.errors import FlowcliError, InputError, OutputError
from flowcli.evaluation import headline_metrics
from flowcli.io.atomic import atomic_path, check_creatable
from flowcli.models.pwc import FlowOutput
from flowcli.synth.generator import SynthConfig, TextureBank, generate_batch
from flowcli.validation import dataclass_problem

DEFAULT_STEPS = 2000
CALIBRATION_STEPS = 5
FEW_STEPS = 20  # a --minutes budget that allows fewer training steps than this is warned about
clock = time.monotonic  # the budget's clock (tests replace it)
# Fields that do not change what is trained: a resumed run may differ in these.
RUNTIME_FIELDS = (
    "device", "precision", "workers", "overwrite", "offline", "keep_state", "checkpoint_every", "gt", "max_pixels",
    "restart",
)  # fmt: skip
# Fields that say where the footage, the base weights and the output are, not what they are. A state records
# what they were (footage fingerprint, base sha256) and a resume is checked against that, so the same run,
# named by other paths (relative / absolute) or after its folders were moved, still resumes.
LOCATION_FIELDS = ("sources", "output", "weights")


@dataclass
class AdaptConfig:
    sources: list[str]
    output: str
    weights: str | None = None  # base model: registry name, hf:// spec, URL or path (default model if None)
    steps: int | None = None  # budget in optimiser steps ...
    minutes: float | None = None  # ... or in wall-clock minutes (steps estimated after a short calibration)
    step: int = 1  # frame gap within a tuple
    temporal: bool = False  # mono: triplets (SelFlow); stereo: stereo video (Flow2Stereo)
    stereo: bool = False
    batch_size: int = 4  # per process
    crop: tuple[int, int] = (320, 448)
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup: int = 20
    clip_grad: float = 10.0
    seed: int = 0
    val_fraction: float = 0.1
    max_val: int = 16  # held-out tuples measured before/after (evenly spaced over the slice)
    distill: bool = True
    stage1_epochs: float = 20.0  # stage-1 length in passes over the training pairs, bounded below
    stage1_fraction: float | None = None  # fixed share of the budget instead
    teachers: list[str] = field(default_factory=list)  # extra teachers for the ensemble
    teacher_flip: bool = False  # add flipped-input predictions to the ensemble
    teacher_scales: tuple[float, ...] = (1.0,)  # input sizes the teachers run at (2.0: frames upsampled 2x)
    teacher_margin: int = 64  # the teacher's window extends this far beyond the student's crop
    max_frames: int | None = None  # the first N of each sequence (video, folder's own images, glob)
    losses: dict = field(default_factory=dict)  # LossWeights overrides
    transforms: dict = field(default_factory=dict)  # TransformConfig overrides
    # Synthetic replay, on when losses["anchor"] > 0: pairs of flowcli synth scenes per step, textured
    # with the training frames, supervised by their exact flow (SynthConfig overrides in anchor_synth).
    anchor_pairs: int = 2
    anchor_synth: dict = field(default_factory=dict)
    checkpoint_every: int = 50
    gt: list[str] = field(default_factory=list)  # "DATASET:ROOT" labeled copies, for the final report
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast on GPUs with bf16 in hardware (Ampere on), fp32 elsewhere
    workers: int | None = None
    overwrite: bool = False
    offline: bool = False
    keep_state: bool = False
    max_pixels: int | None = None  # tile held-out / gt inference above this many pixels
    restart: bool = False  # ignore an existing state

    def __post_init__(self):
        if isinstance(self.sources, (str, os.PathLike)):
            self.sources = [self.sources]  # one source given bare, not read as a list of characters
        self.sources = [str(s) for s in self.sources]
        problem = dataclass_problem(AdaptConfig, {f.name: getattr(self, f.name) for f in fields(self)})
        if problem:
            raise InputError(f"adapt setting {problem}")
        self.crop = tuple(self.crop)
        self.teachers = list(self.teachers)
        self.teacher_scales = tuple(float(v) for v in self.teacher_scales)
        if not self.teacher_scales or min(self.teacher_scales) <= 0:
            raise InputError(f"teacher scales must be positive numbers, got {list(self.teacher_scales)}")
        self.gt = list(self.gt)
        if self.anchor_pairs < 1:
            raise InputError(f"anchor pairs must be at least 1, got {self.anchor_pairs}")

    def identity(self) -> str:
        """The settings that define a run (JSON); a saved state resumes only under the same ones."""
        return json.dumps(self.settings(), sort_keys=True, default=list)

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}

    @property
    def tuple_length(self) -> int:
        """Time steps per training tuple."""
        if self.stereo:
            return 2 if self.temporal else 1
        return 3 if self.temporal else 2


@dataclass
class Plan:
    total: int | None  # None until the minutes budget is calibrated
    stage1: int | None
    crop: tuple[int, int]
    window: tuple[int, int]

    def stage(self, step: int) -> int:
        return 1 if self.stage1 is None or step < self.stage1 else 2


def plan_stages(total: int, train_tuples: int, batch: int, cfg: AdaptConfig) -> int:
    """Steps of stage 1 (photometric); the rest of `total` is distillation.

    Small footage is learnt quickly and then overfitted by the photometric loss, so stage 1 is
    `stage1_epochs` passes over the training tuples, but at least 25 % and at most 60 % of the
    budget; stereo, `distill=False` or a budget under 4 steps give stage 1 only. `stage1_fraction`
    overrides the rule; 0 distils the base model directly.
    """
    if cfg.stereo or not cfg.distill:
        return total
    if cfg.stage1_fraction is not None:
        return min(max(round(cfg.stage1_fraction * total), 0), total)
    if total < 4:
        return total
    epoch = math.ceil(train_tuples / batch)
    stage1 = min(max(round(cfg.stage1_epochs * epoch), math.ceil(0.25 * total)), math.floor(0.6 * total))
    return min(max(stage1, 1), total)


class MinutesBudget:
    """The clock of a `--minutes` budget. It covers the run from its start (loading the model, the teachers and the
    footage, the first measurement) through the training steps to the final report, whose measurement is reserved
    at the length of the first one; the time of an interrupted run counts when it is resumed. Steps are timed per
    stage from the end of the stage's first step in this process (that step warms up), so distillation steps are
    timed on their own; until a stage has its own timing, the previous stage's stands for it."""

    def __init__(self, minutes: float, started: float, spent_before: float, reserve: float):
        self.minutes = minutes
        self.started, self.spent_before, self.reserve = started, spent_before, reserve
        self.stage: int | None = None
        self.timed_from: tuple[float, int] | None = None  # (clock, step) at the end of the stage's first step
        self.per_step: float | None = None  # seconds per step

    def left(self) -> float:
        """Seconds left for training steps."""
        return self.minutes * 60 - self.reserve - self.spent_before - (clock() - self.started)

    def step_done(self, step: int, stage: int) -> None:
        now = clock()
        if stage != self.stage:
            self.stage, self.timed_from = stage, (now, step)
        else:
            start, first = self.timed_from
            self.per_step = (now - start) / (step - first)

    def next_step_fits(self) -> bool:
        """Whether one more step ends within the budget; before any step has been timed, any time left lets it run
        (a run may overshoot by that one step)."""
        left = self.left()
        return left > 0 if self.per_step is None else left >= self.per_step

    def steps_left(self) -> int:
        return max(0, int(self.left() / max(self.per_step or 0.0, 1e-6)))


def check_loss_terms(weights: LossWeights, cfg: AdaptConfig, plan: Plan) -> None:
    """Refuse a stage that would run with every one of its loss terms weighted 0: nothing to learn."""
    stage1_terms = [weights.census, weights.ssim, weights.l1, weights.smooth1, weights.smooth2, weights.anchor]
    if cfg.temporal:
        stage1_terms += [weights.quadrilateral, weights.triangle] if cfg.stereo else [weights.temporal]
    if cfg.stereo:
        stage1_terms.append(weights.vertical)
    runs_stage1 = plan.stage1 is None or plan.stage1 > 0
    runs_stage2 = plan.total is None or plan.stage1 is None or plan.total > plan.stage1
    if runs_stage1 and not any(stage1_terms):
        raise InputError(
            "the photometric stage has no loss term: census, ssim, l1, smooth1 and smooth2 are all 0 (--loss); "
            "set one above 0, or pass --stage1-fraction 0 to go straight to distillation"
        )
    if runs_stage2 and cfg.distill and not cfg.stereo and not (any(stage1_terms) or weights.distill):
        raise InputError("the distillation stage has no loss term: set --loss distill above 0, or pass --no-distill")


def lr_at(step: int, plan: Plan, cfg: AdaptConfig) -> float:
    """Warm-up then cosine decay to 10 %, restarted at the distillation stage."""
    total = plan.total or 10**9  # still calibrating a minutes budget: warm-up only
    stage1 = plan.stage1 if plan.stage1 is not None else total
    start, length = (0, stage1) if step < stage1 else (stage1, max(1, total - stage1))
    k = step - start
    warm = min(1.0, (k + 1) / max(1, min(cfg.warmup, length // 5 + 1)))
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k, length) / length)))


# ----------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_spec: str) -> tuple[_Dist, torch.device]:
    from flowcli.inference import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    requested = resolve_device(device_spec)  # an unknown or absent device is refused under torchrun too
    if world <= 1:
        return _Dist(), requested
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = requested.type == "cuda"
    if use_cuda and requested.index is not None:
        raise InputError(
            f"--device {device_spec} names one GPU, but under torchrun each process takes the GPU of its LOCAL_RANK; "
            "pass --device cuda (or auto)"
        )
    if not dist.is_initialized():
        # rank 0 alone measures the model before and after training while the others wait: allow for it
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return _Dist(rank=rank, world=world, local_rank=local), device


def _barrier(ctx: _Dist) -> None:
    if ctx.world > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- data


def _seed(*parts: int) -> int:
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value % (2**63)


class StepBatches(Dataset):
    """Item `step` is that step's batch for this rank: training tuples in DistributedSampler order
    (reshuffled each epoch), each cropped / transformed with a generator seeded by (seed, step, rank, slot)."""

    def __init__(
        self, footage: Footage, tuples: list, plan: Plan, cfg: AdaptConfig, ctx: _Dist,
        anchor: bool = False, textures: TextureBank | None = None,
    ):  # fmt: skip
        self.footage, self.tuples, self.plan, self.cfg = footage, tuples, plan, cfg
        self.anchor, self.textures = anchor, textures  # anchor: add synthetic replay pairs to every batch
        self.ctx = ctx
        self.sampler = DistributedSampler(
            tuples, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=False
        )
        self.transform_cfg = TransformConfig(**cfg.transforms)
        self._orders: dict[int, list[int]] = {}
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return 2**62

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self.sampler.set_epoch(epoch)
            self._orders = {epoch: list(iter(self.sampler))}
        return self._orders[epoch]

    def __getitem__(self, step: int) -> dict:
        cfg = self.cfg
        per_epoch = len(self.sampler)
        stage = self.plan.stage(step)
        items = []
        for slot in range(cfg.batch_size):
            epoch, k = divmod(step * cfg.batch_size + slot, per_epoch)
            index = self._order(epoch)[k]
            gen = torch.Generator().manual_seed(_seed(cfg.seed, step, self.ctx.rank, slot))
            items.append(self._item(index, stage, gen))
        batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        if self.anchor:
            batch.update(self._anchor(step))
        batch["stage"] = torch.tensor(stage)
        batch["step"] = torch.tensor(step)
        return batch

    def _load(self, index: int) -> torch.Tensor:
        cfg = self.cfg
        for attempt in range(20):
            seq, start = self.tuples[(index + attempt) % len(self.tuples)]
            try:
                return self.footage.load(seq, start, cfg.tuple_length, cfg.step)
            except InputError as error:
                if str(error) not in self._warned:
                    self._warned.add(str(error))
                    warn(f"{error}; using another pair instead")
        raise InputError("20 training tuples in a row could not be read; check the footage (see the warnings above)")

    def _anchor(self, step: int) -> dict:
        cfg = self.cfg
        h, w = self.plan.crop
        synth = SynthConfig(height=h, width=w, **cfg.anchor_synth)
        gen = torch.Generator().manual_seed(_seed(cfg.seed, step, self.ctx.rank, 1 << 20))
        image1, image2, flow, _ = generate_batch(synth, cfg.anchor_pairs, gen, self.textures)
        return {"anchor1": image1, "anchor2": image2, "anchor_flow": flow}

    def _item(self, index: int, stage: int, gen: torch.Generator) -> dict:
        cfg = self.cfg
        frames = self._load(index)
        if stage == 1:
            frames = random_crop(frames, self.plan.crop, gen)
            return {"frames": flip_and_reverse(frames, gen, cfg.stereo, cfg.tuple_length).contiguous()}
        window = random_crop(frames, self.plan.window, gen)
        window = flip_and_reverse(window, gen, False, cfg.tuple_length).contiguous()
        return {"frames": window, **sample_view(gen, self.plan.crop, self.plan.window, self.transform_cfg)}


def _loader(dataset: StepBatches, start: int, end: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """`pin_memory` (training on CUDA): page-locked batches, which the step copies to the GPU without waiting; not
    for a CPU run on a machine with a GPU, where it would start a CUDA context on GPU 0 for nothing."""
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start, end),
        num_workers=workers,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        pin_memory=pin_memory,
        worker_init_fn=start_data_worker if workers else None,
    )


# ----------------------------------------------------------------------------- one step


def _chunks(out: FlowOutput, sizes: list[int]) -> list[FlowOutput]:
    flows = out.flow.float().split(sizes)
    levels = {lvl: f.float().split(sizes) for lvl, f in out.level_flows.items()}
    return [FlowOutput(flow=flows[i], level_flows={lvl: levels[lvl][i] for lvl in levels}) for i in range(len(sizes))]


def _forward(net, first: list[torch.Tensor], second: list[torch.Tensor], dtype: torch.dtype) -> list[FlowOutput]:
    """One batched pass over several (first, second) pairs: one forward per step keeps DDP simple."""
    a, b = torch.cat(first), torch.cat(second)
    with torch.autocast(a.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = net(a, b)
    return _chunks(out, [t.shape[0] for t in first])


def _student_terms(
    net, frames: torch.Tensor, weights: LossWeights, cfg: AdaptConfig, dtype, anchor_batch: dict | None = None, **extra
) -> dict:
    """Loss terms of the model on frames [B, T, 3, h, w] (mono pair, mono triplet, stereo pair, stereo video).

    anchor_batch (synthetic image1, image2, flow) rides along in the same forward pass for the replay term.
    """
    valid1, valid2 = extra.pop("valid1", None), extra.pop("valid2", None)
    anchor_flow: list[torch.Tensor] = []

    def forward(first: list[torch.Tensor], second: list[torch.Tensor]) -> list[FlowOutput]:
        if anchor_batch is None:
            return _forward(net, first, second, dtype)
        outs = _forward(net, [*first, anchor_batch["anchor1"]], [*second, anchor_batch["anchor2"]], dtype)
        anchor_flow.append(outs[-1].flow)
        return outs[:-1]

    def anchor() -> tuple[torch.Tensor, torch.Tensor] | None:
        return (anchor_flow[0], anchor_batch["anchor_flow"]) if anchor_batch is not None else None

    if cfg.stereo and cfg.temporal:
        lt, rt, lt1, rt1 = frames.unbind(1)
        first, second = [lt, rt, lt, lt1, rt, rt1, lt1, rt1], [rt, lt, lt1, lt, rt1, rt, rt1, lt1]
        if weights.triangle:
            first, second = first + [lt, rt1], second + [rt1, lt]
        outs = forward(first, second)
        s_t, s_tb, wl, wlb, wr, wrb, s_t1, s_t1b = outs[:8]
        pairs = [
            PairFlows(lt, rt, s_t, s_tb, stereo=True),
            PairFlows(lt1, rt1, s_t1, s_t1b, stereo=True),
            PairFlows(lt, lt1, wl, wlb),
            PairFlows(rt, rt1, wr, wrb),
        ]
        cross = None
        if weights.triangle:
            pairs.append(PairFlows(lt, rt1, outs[8], outs[9]))
            cross = outs[8].flow
        video = StereoVideo(wl.flow, wlb.flow, wr.flow, s_t.flow, s_tb.flow, s_t1.flow, cross)
        return adapt_loss(pairs, weights, stereo_video=video, anchor=anchor())
    if cfg.stereo:
        left, right = frames.unbind(1)
        fw, bw = forward([left, right], [right, left])
        return adapt_loss(PairFlows(left, right, fw, bw, stereo=True), weights, anchor=anchor())
    if cfg.temporal:
        prev, cur, nxt = frames.unbind(1)
        fw, bw, pv, pvb = forward([cur, nxt, cur, prev], [nxt, cur, prev, cur])
        visible = (1 - fb_occlusion(fw.flow, bw.flow)) * (1 - fb_occlusion(pv.flow, pvb.flow))
        pairs = [PairFlows(cur, nxt, fw, bw, valid1, valid2), PairFlows(cur, prev, pv, pvb)]
        return adapt_loss(pairs, weights, previous=pv.flow, previous_mask=visible, anchor=anchor(), **extra)
    first, second = frames.unbind(1)
    fw, bw = forward([first, second], [second, first])
    return adapt_loss(PairFlows(first, second, fw, bw, valid1, valid2), weights, anchor=anchor(), **extra)


def _anchor_batch(batch: dict) -> dict | None:
    return {k: batch[k] for k in ("anchor1", "anchor2", "anchor_flow")} if "anchor1" in batch else None


def _distill_terms(net, teachers, batch: dict, plan: Plan, weights: LossWeights, cfg: AdaptConfig, dtype) -> dict:
    window = batch["frames"]
    tcfg = TransformConfig(**cfg.transforms)
    flow, occlusion = teacher_predictions(
        teachers, window, temporal=cfg.temporal, flip=cfg.teacher_flip, scales=cfg.teacher_scales, dtype=dtype
    )
    target_index = window.shape[1] - 1  # the main pair's frame 2: (t, t+1), last in the tuple
    student, noise = make_student_view(window, batch, plan.crop, tcfg, target_index=target_index)
    targets = teacher_targets(flow, occlusion, batch, plan.crop, noise)
    terms = _student_terms(
        net, student, weights, cfg, dtype, _anchor_batch(batch), valid1=1 - targets["hallucinated"],
        valid2=1 - noise, teacher_flow=targets["flow"], teacher_mask=targets["mask"],
    )  # fmt: skip
    terms["distill_px"] = targets["mask"].mean()
    return terms


# ----------------------------------------------------------------------------- the run


def _precision(spec: str, device: torch.device) -> torch.dtype:
    from flowcli.inference import native_bf16, resolve_precision

    if spec == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if spec not in ("fp32", "bf16"):  # fp16 too: its gradients underflow without loss scaling, which adapt lacks
        raise InputError(f"precision must be auto, fp32 or bf16, got {spec!r}")
    return resolve_precision(spec, device)


def _precision_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def work_dir(output: str | Path) -> Path:
    """The run folder next to the output: `<stem>.adapt/` (state.pt, last.safetensors, video cache)."""
    output = Path(output)
    return output.with_name(output.stem + ".adapt")


def report_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def _evenly(items: list, count: int) -> list:
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(1, count - 1))] for i in range(count)]


def _public(spec: str) -> str:
    """A local path reduced to its name, so a published checkpoint does not reveal the user's folders; a URL
    without its user info, query string and fragment (where signed URLs and tokens go); registry names and
    hf:// specs stay as they are."""
    if spec.lower().startswith(("https://", "http://")):
        return _public_url(spec)
    if spec.startswith(("hf://", "bundled:")) or not ("/" in spec or Path(spec).exists()):
        return spec
    parts = Path(spec.rstrip("/")).parts
    patterns = [i for i, part in enumerate(parts) if any(char in part for char in "*?[")]
    if patterns and not Path(spec).exists():  # a glob keeps its pattern from the folder it searches: shots/*.png
        return "/".join(parts[max(patterns[0] - 1, 0) :]).lstrip("/") or spec
    return Path(spec.rstrip("/")).name or spec


def _public_url(spec: str) -> str:
    """An http(s) URL without user info, query string and fragment; any other spec as it is."""
    if not spec.lower().startswith(("https://", "http://")):
        return spec
    parts = urlsplit(spec)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _public_config(cfg: AdaptConfig) -> dict:
    data = {k: v for k, v in asdict(cfg).items() if k not in ("overwrite", "restart", "keep_state", "offline")}
    data["sources"] = [_public(s) for s in cfg.sources]
    data["output"] = Path(cfg.output).name
    data["weights"] = _public(cfg.weights) if cfg.weights else None
    data["teachers"] = [_public(t) for t in cfg.teachers]
    data["gt"] = [g.split(":", 1)[0] for g in cfg.gt]
    return data


def _resolved(root: str) -> str:
    """A --gt root as one spelling: relative and absolute names of one folder compare equal."""
    return str(Path(root).expanduser().resolve())


def _decodable(footage: Footage, tuples: list, step: int) -> list:
    """The tuples whose measured pair decodes: a frame that passed the header check but does not decode is left
    out of the before/after measurement with a warning, instead of silently emptying the report."""
    kept = []
    for seq, start in tuples:
        try:
            footage.load(seq, start, 1 if footage.stereo else 2, step)
        except InputError as error:
            warn(f"{error}; the report leaves that pair out")
            continue
        kept.append((seq, start))
    return kept


def _footage_textures(footage: Footage, train: list, count: int = 48) -> TextureBank | None:
    """Frames of the training tuples (evenly spaced, never the held-out slice) as textures for replay scenes."""
    images = []
    for seq, start in _evenly(train, count):
        try:
            images.append(TextureBank.stored(footage.load(seq, start, 1)[0]))
        except InputError:  # unreadable: StepBatches warns about it when it meets the pair
            continue
    return TextureBank(images) if images else None


def _check_finite(value: torch.Tensor, what: str, step: int, cfg: AdaptConfig) -> None:
    """Stop a diverged run before it writes NaN weights (checked before the optimiser step)."""
    value = value.detach()
    if not bool(torch.isfinite(value)):
        raise FlowcliError(
            f"training diverged: the {what} is {float(value)} at step {step + 1}, so no adapted checkpoint was "
            f"written; lower --lr (it is {cfg.lr:g}) and pass --restart"
        )


def _resume_problem(state: dict, cfg: AdaptConfig, fingerprint: str, base_sha256: str) -> str | None:
    """Why a saved state cannot be resumed under `cfg` (None if it can): the settings that differ."""
    saved, current = json.loads(state["config"]), cfg.settings()
    if state.get("fingerprint") is not None:  # compare the footage and base by content, not by their paths
        if state["fingerprint"] != fingerprint:
            return "different footage (its frames or their content changed)"
        if state.get("base_sha256") != base_sha256:
            return "different base weights"
        for name in LOCATION_FIELDS:
            saved.pop(name, None)
            current.pop(name, None)
    changed = changed_settings(saved, current, field_defaults(AdaptConfig))
    return f"different settings ({', '.join(changed)})" if changed else None


def _unused_options(cfg: AdaptConfig) -> str | None:
    """Why options given would do nothing in this run's mode (one line), or None: refused, not ignored."""

    def refuse(options: list[str], why: str) -> str:
        return f"{' and '.join(options)} {'has' if len(options) == 1 else 'have'} no effect here: {why}; drop " + (
            "it" if len(options) == 1 else "them"
        )

    distilling = [
        option
        for option, given in (
            ("--teacher", bool(cfg.teachers)),
            ("--teacher-flip", cfg.teacher_flip),
            ("--teacher-scale", cfg.teacher_scales != (1.0,)),
            ("--stage1-fraction", cfg.stage1_fraction is not None),
            ("--loss distill", "distill" in cfg.losses),
            ("--transform", bool(cfg.transforms)),  # the student's views, a distillation-stage setting
        )
        if given
    ]
    if distilling and cfg.stereo:
        return refuse(distilling, "--stereo runs the photometric stage only, with no distillation")
    if distilling and not cfg.distill:
        return refuse(distilling, "--no-distill skips the distillation stage")
    stereo = [
        f"--loss {key}" for key in ("vertical", "zero_vertical", "quadrilateral", "triangle") if key in cfg.losses
    ]
    if stereo and not cfg.stereo:
        setting = "it is a --stereo setting" if len(stereo) == 1 else "they are --stereo settings"
        return refuse(stereo, f"{setting}, and this run is not a stereo one")
    video = [f"--loss {key}" for key in ("quadrilateral", "triangle") if key in cfg.losses]
    if video and not cfg.temporal:
        constraint = "it is a constraint" if len(video) == 1 else "they are the constraints"
        return refuse(video, f"{constraint} of a stereo video (--stereo --temporal)")
    if "temporal" in cfg.losses and (cfg.stereo or not cfg.temporal):
        return refuse(["--loss temporal"], "it is the constant-velocity term of triplets (--temporal without --stereo)")
    return None


def _from_rank0(ctx: _Dist, device: torch.device, value: int) -> int:
    """Rank 0's value on every rank: decisions taken on its clock (steps to run, whether to stop) must agree."""
    if ctx.world == 1:
        return value
    shared = torch.tensor([value], device=device, dtype=torch.int64)
    dist.broadcast(shared, src=0)
    return int(shared)


def _minutes_for(seconds: float) -> float:
    """A --minutes value to suggest for `seconds`: whole minutes, or half a minute at least."""
    return max(0.5, math.ceil(seconds / 60))


def _budget_too_short(minutes: float, step: int, left_for_training: float, budget: MinutesBudget) -> str:
    """The one-line refusal of a --minutes budget that cannot fit one training step."""
    before_training = minutes * 60 - left_for_training  # loading, the first measurement and the report's reserve
    if step == 0:
        return (
            f"--minutes {minutes:g} leaves no time to train: loading and measuring the model took "
            f"{before_training - budget.reserve:.1f} s, and the final report needs about {budget.reserve:.1f} s "
            "more; pass a longer --minutes, or --steps N"
        )
    first = left_for_training - budget.left()
    return (
        f"--minutes {minutes:g} is too short for one training step: the first took {first:.1f} s, and "
        f"{max(left_for_training, 0):.1f} s were left for it after loading and measuring the model and reserving as "
        f"long for the final report; --minutes {_minutes_for(before_training + FEW_STEPS * first):g} allows about "
        f"{FEW_STEPS} steps, or pass --steps N"
    )


def _few_steps_message(minutes: float, total: int, step: int, budget: MinutesBudget) -> str:
    """The warning for a --minutes budget that allows only a handful of steps: the checkpoint will be barely
    adapted."""
    if budget.per_step is None:
        return (f"the {minutes:g}-minute budget allows only {total} training step(s): too few to adapt the model "
                "much; pass a longer --minutes")  # fmt: skip
    needed = minutes * 60 - budget.left() + (FEW_STEPS - step) * budget.per_step
    return (
        f"the {minutes:g}-minute budget allows only {total} training step(s) ({budget.per_step:.1f} s each): too "
        f"few to adapt the model much; --minutes {_minutes_for(needed):g} allows about {FEW_STEPS}"
    )


def _floor_to(value: int, multiple: int) -> int:
    return value // multiple * multiple


def adapt(cfg: AdaptConfig, *, quiet: bool = False, callback: Callable[[int, dict], None] | None = None) -> dict:
    """Run (or resume) an adaptation; returns the report (also written next to the output).

    `callback(step, record)` is called after every step (tests raise KeyboardInterrupt from it to
    simulate Ctrl-C). Raises InputError / OutputError / WeightsError for what the user can fix.
    """

    if cfg.steps is not None and cfg.minutes is not None:
        raise InputError("give either --steps or --minutes as the budget, not both")
    if (cfg.steps is not None and cfg.steps <= 0) or (cfg.minutes is not None and cfg.minutes <= 0):
        raise InputError("the budget must be positive: --steps N (N >= 1) or --minutes M (M > 0)")
    if cfg.step < 1 or cfg.batch_size < 1:
        raise InputError("--step and --batch-size must be at least 1")
    if not cfg.lr > 0:
        raise InputError(f"--lr must be positive, got {cfg.lr:g}")
    if cfg.workers is not None and cfg.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {cfg.workers}; 0 loads the data in the main process")
    if not 0 <= cfg.val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1) (a share of the pairs), got {cfg.val_fraction:g}")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {cfg.max_frames}; leave it out to use every frame")
    if cfg.stage1_fraction is not None and not 0 <= cfg.stage1_fraction <= 1:
        raise InputError(
            f"--stage1-fraction must be in [0, 1] (a share of the budget), got {cfg.stage1_fraction:g}; "
            "0 skips the photometric stage, --no-distill skips distillation"
        )
    unused = _unused_options(cfg)
    if unused:
        raise InputError(unused)
    for option, config, settings in (
        ("--loss", LossWeights, cfg.losses),
        ("--transform", TransformConfig, cfg.transforms),
    ):
        try:
            config(**settings)
        except (TypeError, ValueError) as error:
            raise InputError(f"{option}: {error}") from None
    sized = sorted({"height", "width"} & set(cfg.anchor_synth))
    if sized:
        raise InputError(f"anchor_synth may not set {' or '.join(sized)}: replay scenes take the training crop's size")
    try:
        SynthConfig(**cfg.anchor_synth)
    except (TypeError, ValueError) as error:
        raise InputError(f"anchor_synth: {error}") from None
    if cfg.steps is None and cfg.minutes is None:
        cfg.steps = DEFAULT_STEPS
    output = Path(cfg.output)
    if output.name == ".safetensors":  # Path reads it as a name without an extension
        raise InputError(
            f"the output {output} has an empty file name, only the extension; name the checkpoint, e.g. "
            f"{output.with_name('model.safetensors')}"
        )
    if output.suffix != ".safetensors":
        raise InputError(f"the output {output} must be a .safetensors file")
    check_creatable(output, cfg.overwrite)
    check_creatable(report_path(output), cfg.overwrite)
    gt_sets = parse_gt(cfg.gt)

    ctx, device = _init_distributed(cfg.device)
    dtype = _precision(cfg.precision, device)
    workdir = work_dir(output)
    state_path = workdir / "state.pt"
    if cfg.restart and ctx.main:
        state_path.unlink(missing_ok=True)
    new_folders = [folder for folder in (workdir, *workdir.absolute().parents) if not folder.exists()]
    if workdir.exists() and not workdir.is_dir():
        raise OutputError(f"{workdir} is a file, but the run folder (state, video cache) goes there; move it away")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the run folder {workdir}: {error.strerror}") from None
    try:
        return _run(cfg, ctx, device, dtype, workdir, state_path, gt_sets, output, quiet, callback)
    except BaseException:
        if new_folders and ctx.main and not state_path.exists():  # nothing to resume: leave no trace
            shutil.rmtree(workdir, ignore_errors=True)
            for folder in new_folders[1:]:  # the output's own folders this run made, if still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def _run(cfg, ctx, device, dtype, workdir, state_path, gt_sets, output, quiet, callback) -> dict:
    from flowcli.models import DEFAULT_MODEL, load_model, load_model_and_file

    started = clock()

    # the model first: its size multiple bounds --crop, and a bad crop is refused before any footage is decoded
    base_spec = DEFAULT_MODEL if cfg.weights is None else cfg.weights
    model, _, base_sha256 = load_model_and_file(base_spec, device, offline=cfg.offline)
    multiple = model.config.size_multiple
    if min(cfg.crop) < multiple:
        raise InputError(
            f"--crop {cfg.crop[0]}x{cfg.crop[1]} is too small: this model needs at least {multiple}x{multiple} "
            f"(HEIGHTxWIDTH, rounded down to multiples of {multiple})"
        )
    weights = LossWeights(**cfg.losses)
    levels = sorted(model.config.decoded_levels)
    unknown = [s for s in weights.scales if s != 0 and s not in levels]
    if unknown:
        raise InputError(
            f"--loss scales: this model has no pyramid level {unknown[0]}; use 0 (full resolution) or "
            f"{', '.join(map(str, levels))}, e.g. --loss scales=0,2,3"
        )

    length = cfg.tuple_length
    if not ctx.main:
        _barrier(ctx)  # rank 0 scans first: it decodes videos into the shared cache
    footage = scan_footage(
        cfg.sources, stereo=cfg.stereo, cache_dir=workdir / "cache", max_frames=cfg.max_frames,
        min_frames=length,
    )  # fmt: skip
    if ctx.main:
        _barrier(ctx)
    tuples = footage.tuples(length, cfg.step)
    span = (length - 1) * cfg.step
    if not tuples:
        what = "stereo pairs" if cfg.stereo else f"{length}-frame tuples"
        longest = max(len(seq) for seq in footage.sequences)
        if longest <= span:
            unit = "stereo pairs" if cfg.stereo else "frames"
            capped = f" (--max-frames {cfg.max_frames})" if longest == cfg.max_frames else ""
            fix = f"raise --max-frames to {span + 1} or more, or lower --step" if capped else "lower --step"
            raise InputError(
                f"no usable {what} in the footage: --step {cfg.step} needs sequences of at least {span + 1} {unit}, "
                f"and the longest has {longest}{capped}; {fix}"
            )
        raise InputError(f"no usable {what} in the footage (frames unreadable or too few); check the sources")
    train, held = footage.split(tuples, cfg.val_fraction, span)
    if not held or held == tuples:  # nothing held out (footage this short is all trained on)
        if cfg.val_fraction > 0 and ctx.main:
            warn(f"the footage has only {len(tuples)} usable pair(s), too few for a held-out slice; "
                 "the report measures the training pairs")  # fmt: skip
        held = []
    measured = _evenly(held or train, cfg.max_val)  # the pairs the report measures before and after
    measured_on = "heldout" if held else "training"

    min_h, min_w = footage.min_size()
    crop = (_floor_to(min(cfg.crop[0], min_h), multiple), _floor_to(min(cfg.crop[1], min_w), multiple))
    if crop[0] < multiple or crop[1] < multiple:
        raise InputError(
            f"the smallest frames are {min_h}x{min_w} (height x width); this model needs at least {multiple}x{multiple}"
        )
    if crop != (_floor_to(cfg.crop[0], multiple), _floor_to(cfg.crop[1], multiple)) and ctx.main:
        warn(f"training crops are {crop[0]}x{crop[1]} (height x width, as --crop takes them): the smallest frames are "
             f"{min_h}x{min_w}")  # fmt: skip
    window = (min(min_h, crop[0] + 2 * cfg.teacher_margin), min(min_w, crop[1] + 2 * cfg.teacher_margin))
    if not any(s == 0 or min(crop) >> s >= weights.min_scale_side for s in weights.scales):
        raise InputError(
            f"--loss scales={','.join(map(str, weights.scales))}: at the {crop[0]}x{crop[1]} (height x width) "
            f"training crop every level is under min_scale_side ({weights.min_scale_side} px), so no scale is left; "
            "add 0 (full resolution) or a finer level"
        )
    if ctx.main:
        measured = _decodable(footage, measured, cfg.step)
        if not measured and held:
            warn("no held-out pair could be decoded; the report measures the training pairs")
            measured, measured_on = _decodable(footage, _evenly(train, cfg.max_val), cfg.step), "training"

    model.train()
    net = model
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch_world = cfg.batch_size * ctx.world
    plan = Plan(total=None, stage1=None, crop=crop, window=window)
    if cfg.steps is not None:
        plan.total = cfg.steps
        plan.stage1 = plan_stages(cfg.steps, len(train), batch_world, cfg)
    elif cfg.stage1_fraction == 0 and cfg.distill and not cfg.stereo:
        plan.stage1 = 0  # a minutes budget is then calibrated on distillation steps
    check_loss_terms(weights, cfg, plan)
    step, history, teacher = 0, [], None
    before: dict = {}
    elapsed_before = 0.0

    fingerprint = footage.fingerprint()
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        problem = _resume_problem(state, cfg, fingerprint, base_sha256)
        if problem:
            raise InputError(
                f"{state_path} belongs to a run with {problem}; run the same command to resume it, "
                "or pass --restart to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], json.loads(state["history"])
        before = json.loads(state["before"])
        elapsed_before = state["elapsed"]
        plan.total, plan.stage1 = state["total"], state["stage1"]
        if state.get("teacher") is not None:
            teacher = freeze(model)
            teacher.load_state_dict(state["teacher"])
        if ctx.main:
            say(f"resuming {output} at step {step}/{plan.total or '?'} (state in {state_path})")

    # extra teachers only where a distillation stage may run (a minutes budget is not split yet)
    distills = plan.total is None or plan.stage1 is None or plan.stage1 < plan.total
    specs = cfg.teachers if distills else []
    if not distills and ctx.main:
        unused = [o for o, given in (("--teacher", cfg.teachers), ("--teacher-flip", cfg.teacher_flip),
                                     ("--teacher-scale", cfg.teacher_scales != (1.0,))) if given]  # fmt: skip
        if unused:
            warn(f"{' and '.join(unused)} not used: the {plan.total}-step budget leaves no distillation stage")
    extra_teachers = [freeze(load_model(spec, device=device, offline=cfg.offline)) for spec in specs]

    if not before and ctx.main:
        t0 = clock()
        before = {"heldout": heldout_metrics(model, footage, measured, step=cfg.step,
                                             precision=_precision_name(dtype), max_pixels=cfg.max_pixels)}  # fmt: skip
        if gt_sets:
            before["gt"] = headline_metrics(model, gt_sets, precision=_precision_name(dtype), max_pixels=cfg.max_pixels)
            before["gt_roots"] = {name: _resolved(root) for name, root in gt_sets}
        before["seconds"] = round(clock() - t0, 2)
    # a dataset dropped from --gt when resuming leaves "before" too: the report and provenance compare the same sets
    asked = {name for name, _ in gt_sets}
    for key in ("gt", "gt_roots"):
        if key in before:
            before[key] = {name: value for name, value in before[key].items() if name in asked}
            if not before[key]:
                del before[key]
    # --gt is matched by dataset name: one added when resuming, or given another root (a state saved before the
    # roots were recorded names none), is measured on the base itself, as the model has trained since
    gt_roots = before.get("gt_roots") or {}
    unmeasured = [(name, root) for name, root in gt_sets
                  if name not in (before.get("gt") or {}) or gt_roots.get(name) != _resolved(root)]  # fmt: skip
    if unmeasured and ctx.main:
        base_model = load_model(base_spec, device=device, offline=cfg.offline)
        added = headline_metrics(base_model, unmeasured, precision=_precision_name(dtype), max_pixels=cfg.max_pixels)
        before["gt"] = {**(before.get("gt") or {}), **added}
        before["gt_roots"] = {**gt_roots, **{name: _resolved(root) for name, root in unmeasured}}
        del base_model

    def provenance(final: bool, after: dict | None = None) -> dict:
        recent = history[-50:]
        photometric = min(step, step if plan.stage1 is None else plan.stage1)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for record in recent:  # a term absent from some steps (distill in stage 1) is averaged where it ran
            for key, value in record.items():
                if key not in ("step", "stage", "lr") and isinstance(value, (int, float)):
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
        losses = {key: sums[key] / counts[key] for key in sums}
        return {
            "trained_by": "flowcli adapt",
            "base_weights": {"spec": _public(base_spec), "sha256": base_sha256},
            "footage": {
                **footage.summary(),
                "sources": sorted({_public(source) for source in cfg.sources}),  # LEFT_DIR RIGHT_DIR: both
                "fingerprint": fingerprint,
                "train_tuples": len(train),
                "heldout_tuples": len(held),  # 0: none held out, the report measures training pairs
                "measured_on": measured_on,
                "step": cfg.step,
            },
            "mode": ("stereo" if cfg.stereo else "flow")
            + (" video" if cfg.temporal and cfg.stereo else "")
            + (" triplets" if cfg.temporal and not cfg.stereo else ""),
            "steps": step,
            "stages": {
                "photometric": photometric,
                "distillation": step - photometric,
            },
            "complete": final,
            "losses": {k: round(v, 5) for k, v in losses.items()},
            "teachers": (
                ["base model" if plan.stage1 == 0 else "stage-1 snapshot", *map(_public, cfg.teachers)]
                + (["flipped inputs"] if cfg.teacher_flip else [])
                + ([f"input scales {list(cfg.teacher_scales)}"] if cfg.teacher_scales != (1.0,) else [])
            )
            if plan.stage1 is not None and plan.total is not None and plan.stage1 < plan.total
            else [],
            "heldout_before": before.get("heldout"),
            "heldout_after": (after or {}).get("heldout"),
            "gt_before": before.get("gt"),
            "gt_after": (after or {}).get("gt"),
            "crop": list(plan.crop),
            "processes": ctx.world,  # torchrun: each step saw batch_size tuples per process
            "date": time.strftime("%Y-%m-%d"),
            "config": _public_config(cfg),
        }

    saved_at = [None]  # the step of the last saved state

    def save_state() -> None:
        if not ctx.main:
            return
        saved_at[0] = step
        with atomic_path(state_path, overwrite=True) as tmp:
            torch.save(
                {
                    "config": cfg.identity(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "teacher": teacher.state_dict() if teacher is not None else None,
                    "step": step,
                    "total": plan.total,
                    "stage1": plan.stage1,
                    "history": json.dumps(history),
                    "before": json.dumps(before),
                    "elapsed": elapsed_before + clock() - started,
                    "fingerprint": fingerprint,
                    "base_sha256": base_sha256,
                },
                tmp,
            )
        save_checkpoint(model, workdir / "last.safetensors", provenance=provenance(False))

    workers = cfg.workers if cfg.workers is not None else (min(4, max(0, (os.cpu_count() or 1) // ctx.world - 1))
                                                           if device.type == "cuda" else 0)  # fmt: skip
    textures = _footage_textures(footage, train) if weights.anchor > 0 else None
    dataset = StepBatches(footage, train, plan, cfg, ctx, anchor=weights.anchor > 0, textures=textures)

    def teachers_all():
        return [teacher, *extra_teachers]

    budget, left_for_training = None, None
    if cfg.minutes is not None:  # the time spent so far (loading, the first measurement, steps before a resume) counts
        budget = MinutesBudget(cfg.minutes, started, elapsed_before, reserve=before.get("seconds", 0.0))
        left_for_training = budget.left()
    fresh = step == 0  # not a resumed run
    few_steps_warned = [False]

    def recalibrate_at_stage2() -> bool:
        """A minutes budget is first timed on photometric steps, but a distillation step costs something else
        (the teacher runs, the student's losses differ), so the first distillation steps are timed again."""
        return (
            cfg.minutes is not None
            and bool(plan.stage1)
            and plan.total is not None
            and (step <= plan.stage1 < plan.total)
        )

    def budget_allows_step() -> bool:
        """Whether the minutes budget lets one more step run; rank 0 decides for every rank. A budget that cannot fit
        one step (no time left before the first, or the first of a fresh run ended past it) is refused."""
        go, stop, too_short = 0, 1, 2
        verdict = go
        if not budget.next_step_fits():
            verdict = too_short if step == 0 or (fresh and step == 1 and budget.left() < 0) else stop
        if ctx.world > 1 and ctx.main and verdict == too_short:
            # one refusal for the job, printed by rank 0 before the other ranks learn of it and stop: torchrun then
            # ends the job, which could cut rank 0 off before it said why
            print_error(InputError(_budget_too_short(cfg.minutes, step, left_for_training, budget)))
        verdict = _from_rank0(ctx, device, verdict)
        if verdict == too_short:
            refusal = InputError(_budget_too_short(cfg.minutes, step, left_for_training, budget))
            refusal.shown = ctx.world > 1
            raise refusal
        return verdict == go

    shrunk_once = [False]

    def shrink_plan_to_budget() -> None:
        """Steps slower than when the budget was timed would end the run before its planned count, with its learning
        rate not yet decayed; the plan shrinks to the steps the time left allows, so the schedule ends with the
        budget. A stage 1 that a distillation stage follows is split again by the footage-size rule."""
        fits = _from_rank0(ctx, device, step + budget.steps_left())
        if fits >= plan.total - 1:  # one step of slack: the budget's own check stops an overshoot of one
            return
        if plan.stage1 is None or plan.stage1 >= plan.total:  # one stage
            plan.stage1 = plan.total = fits
        elif step < plan.stage1:
            plan.total = fits
            plan.stage1 = min(max(plan_stages(fits, len(train), batch_world, cfg), step), fits)
        else:
            plan.total = fits
        bar.update(task, total=plan.total)
        if ctx.main and not shrunk_once[0]:
            shrunk_once[0] = True
            say(f"steps slowed to {budget.per_step:.2f} s: the {cfg.minutes:g}-minute budget now allows "
                f"{plan.total} steps, and the schedule is shortened to end with it")  # fmt: skip
        warn_if_few_steps()

    def warn_if_few_steps() -> None:
        if ctx.main and plan.total < FEW_STEPS and not few_steps_warned[0]:
            few_steps_warned[0] = True
            warn(_few_steps_message(cfg.minutes, plan.total, step, budget))

    def skip_distillation() -> None:
        """End the run with stage 1 when the minutes budget ends with the timing of the distillation steps: those steps
        all ran in the learning rate's warm-up, with none left to run on a schedule sized to the time, so they are
        undone (the teacher is the model as stage 1 left it) rather than leaving the model mid-warm-up."""
        nonlocal step
        if step > plan.stage1:
            model.load_state_dict(teacher.state_dict())
            del history[plan.stage1 :]
        step = plan.total = plan.stage1
        bar.update(task, total=plan.total, completed=step)
        if ctx.main:
            warn(f"the {cfg.minutes:g}-minute budget leaves too little time for a distillation stage: timing its first "
                 f"steps used up the time left, so the stage is skipped and the model after the {step} photometric "
                 "steps is kept; pass a longer --minutes to distil")  # fmt: skip
        save_state()

    if budget is not None and step == 0:
        budget_allows_step()  # no time left to train: refused before a progress bar is drawn
    batches = None
    try:
        with progress(quiet or not ctx.main) as bar:
            task = bar.add_task("adapt", total=plan.total, completed=step, info="")
            while plan.total is None or step < plan.total:
                if recalibrate_at_stage2() and step == plan.stage1:
                    plan.total = None
                timing_distillation = plan.total is None and bool(plan.stage1) and step >= plan.stage1
                if plan.total is None:  # timing: CALIBRATION_STEPS from the stage's start, 2 after a resume
                    timed_from = plan.stage1 if plan.stage1 and step >= plan.stage1 else 0
                    end = max(timed_from + CALIBRATION_STEPS, step + 2)
                else:  # with a second timing due, stop at the stage change
                    end = plan.stage1 if recalibrate_at_stage2() else plan.total
                budget_spent = False
                batches = iter(_loader(dataset, step, end, workers, pin_memory=device.type == "cuda"))
                while True:
                    with receiving_batch(workers):
                        batch = next(batches, None)
                    if batch is None:
                        break
                    if budget is not None and not budget_allows_step():
                        budget_spent = True
                        break
                    stage = plan.stage(step)
                    if stage == 2 and teacher is None:
                        teacher = freeze(model)  # the model before the distillation stage
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(step, plan, cfg)
                    if stage == 1:
                        terms = _student_terms(net, batch["frames"], weights, cfg, dtype, _anchor_batch(batch))
                    else:
                        terms = _distill_terms(net, teachers_all(), batch, plan, weights, cfg, dtype)
                    optimizer.zero_grad(set_to_none=True)
                    _check_finite(terms["total"], "loss", step, cfg)
                    terms["total"].backward()
                    _check_finite(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad), "gradient",
                                  step, cfg)  # fmt: skip
                    with interrupt_deferred():  # a Ctrl-C saves a whole step: weights, moments and count together
                        optimizer.step()
                        step += 1
                        record = {"step": step, "stage": stage, "lr": optimizer.param_groups[0]["lr"]}
                        record.update({k: round(float(v.detach()), 5) for k, v in terms.items()})
                        history.append(record)
                    info = f"stage {stage} " + " ".join(
                        f"{k} {record[k]:.3f}" for k in ("photo", "smooth1", "smooth2", "distill", "temporal",
                                                        "vertical", "quad", "triangle", "anchor", "occ") if k in record
                    )  # fmt: skip
                    bar.update(task, completed=step, info=info)
                    if ctx.main and not quiet and not stderr.is_terminal and step % 10 == 0:
                        say(f"step {step}/{plan.total or '?'} {info}")
                    if callback is not None:
                        callback(step, record)
                    if budget is not None:
                        budget.step_done(step, stage)
                        if plan.total is not None and step < plan.total:
                            shrink_plan_to_budget()
                    if plan.total is not None and (step % cfg.checkpoint_every == 0 or step == plan.total):
                        save_state()
                    if plan.total is not None and step >= (plan.stage1 if recalibrate_at_stage2() else plan.total):
                        break  # the plan shrank below the end this loader was asked for
                batches = None  # its workers end now, before those of the next loader start
                if budget_spent and timing_distillation:
                    skip_distillation()
                elif budget_spent:  # the run ends here, during a timing or before the planned count
                    planned = plan.total
                    plan.total = step
                    plan.stage1 = step if plan.stage1 is None else min(plan.stage1, step)
                    bar.update(task, total=plan.total)
                    if ctx.main:
                        say(f"the {cfg.minutes:g}-minute budget is spent after {step} steps"
                            + (f" of the {planned} planned" if planned else ""))  # fmt: skip
                    warn_if_few_steps()
                    save_state()
                elif plan.total is None:  # the timing is done: as many steps as the time left allows
                    plan.total = _from_rank0(ctx, device, step + budget.steps_left())
                    if timing_distillation and plan.total == step:  # the timing took all the time left
                        skip_distillation()
                        break  # the run ends with stage 1
                    distilling = plan.stage1 is not None and step > plan.stage1
                    if plan.stage1 is None:  # calibrated on stage 1: split the budget now
                        plan.stage1 = max(plan_stages(plan.total, len(train), batch_world, cfg), step)
                    bar.update(task, total=plan.total)
                    if ctx.main:
                        say(
                            f"{budget.per_step:.2f} s/{'distillation ' if distilling else ''}step: the "
                            f"{cfg.minutes:g}-minute budget allows {plan.total} steps"
                            + (" in all" if distilling and plan.stage1 else "")
                        )
                    warn_if_few_steps()
                    save_state()
    except KeyboardInterrupt:
        save_state()
        raise FlowcliError(
            f"interrupted at step {step}/{plan.total or '?'}; state saved in {state_path} (weights so far in "
            f"{workdir / 'last.safetensors'}). Run the same command again to resume."
        ) from None
    finally:
        del batches  # the data workers are shut down now, not at exit after the message (see receiving_batch)

    result: dict = {"output": str(output), "steps": step, "stages": {"photometric": plan.stage1, "total": plan.total}}
    if ctx.main:
        try:
            heldout_after = heldout_metrics(
                model, footage, measured, step=cfg.step, precision=_precision_name(dtype), max_pixels=cfg.max_pixels
            )
            after = {"heldout": heldout_after}
            if gt_sets:
                after["gt"] = headline_metrics(model, gt_sets, precision=_precision_name(dtype),
                                               max_pixels=cfg.max_pixels)
            prov = provenance(True, after)
            save_checkpoint(model, output, provenance=prov, overwrite=cfg.overwrite)
        except KeyboardInterrupt:
            if saved_at[0] != step:
                save_state()
            raise FlowcliError(
                f"interrupted while measuring the trained model: training is done ({step}/{plan.total} steps); "
                f"state saved in {state_path} (trained weights in {workdir / 'last.safetensors'}). Run the same "
                f"command again to finish: it measures the model and writes {output} without training again."
            ) from None
        result.update(
            {
                "base_weights": _public_url(base_spec),  # the report keeps local paths, not URL tokens
                "footage": prov["footage"],
                "heldout": {
                    "before": before.get("heldout"),
                    "after": after["heldout"],
                    "tuples": len(measured),
                    "measured_on": measured_on,
                },
                "gt": {"before": before.get("gt"), "after": after.get("gt")} if gt_sets else None,
                "losses": prov["losses"],
                "seconds": round(elapsed_before + clock() - started, 1),
                "history": history,
            }
        )
        with atomic_path(report_path(output), overwrite=True) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        result["report"] = str(report_path(output))
        if not cfg.keep_state:
            shutil.rmtree(workdir, ignore_errors=True)
    _barrier(ctx)
    return result
