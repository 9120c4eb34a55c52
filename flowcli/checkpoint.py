"""Self-describing checkpoints: safetensors weights + the architecture config in the metadata.

Metadata keys (all strings, as safetensors requires):
  flowcli.format      "1"
  flowcli.model       "flownet" (the architecture family)
  flowcli.config      JSON of the model config (FlowNetConfig.to_dict())
  flowcli.provenance  JSON: what it was trained from and on (free-form, shown by `weights info`)
Loading is strict: every tensor must match the architecture the metadata describes.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, fields, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from flowcli.errors import WeightsError
from flowcli.io.atomic import atomic_path
from flowcli.models.pwc import FlowNet, FlowNetConfig, untie_decoder_weights

FORMAT_VERSION = "1"
ARCHITECTURES = {"flownet": (FlowNet, FlowNetConfig)}
# safetensors dtype names a weight may be stored in (loaded as float32)
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
# bounds on architecture numbers read from a checkpoint's metadata (widths, levels, displacement)
_MAX_CONFIG_INT = 1 << 16
_MAX_CONFIG_LENGTH = 64


def save_checkpoint(
    model: torch.nn.Module,
    path: str | Path,
    provenance: dict | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = True,
) -> Path:
    """Write `model` to `path` atomically; `dtype=torch.float16` halves the file."""
    original = model.state_dict()
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in original.items()}
    if dtype is not None:  # a value past the narrower type's range is stored as inf: a checkpoint nothing can load
        finite = {k for k, v in original.items() if v.is_floating_point() and bool(torch.isfinite(v).all())}
        overflow = next((k for k in sorted(finite) if not bool(torch.isfinite(state[k]).all())), None)
        if overflow is not None:
            largest = float(original[overflow].detach().abs().max())
            raise WeightsError(
                f"cannot store the weights as {str(dtype).removeprefix('torch.')}: {overflow} holds {largest:g}, "
                "beyond its range; keep full precision (leave out --fp16)"
            )
    metadata = {
        "flowcli.format": FORMAT_VERSION,
        "flowcli.model": "flownet",
        "flowcli.config": json.dumps(model.config.to_dict()),
        "flowcli.provenance": json.dumps(provenance or {}),
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def read_metadata(path: str | Path) -> dict:
    """The flowcli metadata of a checkpoint, decoded (config and provenance as dicts)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        if _is_pickle(path):
            raise WeightsError(
                f"{path} is a PyTorch pickle (torch.save) file, not safetensors; flowcli never unpickles checkpoints "
                "(loading one can run any code): use a .safetensors checkpoint written by flowcli (flowcli train, "
                "flowcli adapt, flowcli weights average)"
            ) from None
        hint = ""
        if "not fully covered" in str(error) or "incomplete metadata" in str(error):
            hint = "; the file is cut short or has bytes after its end: copy or download it again"
        raise WeightsError(f"{path} is not a readable safetensors checkpoint ({error}){hint}") from None
    if "flowcli.format" not in meta:
        raise WeightsError(
            f"{path} is not a flowcli checkpoint (no flowcli metadata); flowcli loads the checkpoints it writes "
            "(flowcli train, flowcli adapt, flowcli weights average)"
        )
    if meta["flowcli.format"] != FORMAT_VERSION:
        raise WeightsError(
            f"{path} is a flowcli checkpoint of format {meta['flowcli.format'][:20]!r}, which this flowcli "
            f"(format {FORMAT_VERSION}) cannot read; upgrade flowcli"
        )
    out = dict(meta)
    for key in ("flowcli.config", "flowcli.provenance"):
        try:
            out[key] = json.loads(meta.get(key, "{}"))
        except (json.JSONDecodeError, RecursionError):  # a hostile file can nest [[[...]]] past the stack
            raise WeightsError(f"{path} has corrupt {key} metadata") from None
        if not isinstance(out[key], dict):
            raise WeightsError(f"{path} has corrupt {key} metadata (a JSON object was expected)")
    return out


def check_readable(path: str | Path) -> dict:
    """`read_metadata`, then every tensor read once: what can be checked of a file with no known sha256 (the
    header check already refuses a truncated file)."""
    meta = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                try:
                    f.get_tensor(key)
                except (SafetensorError, RuntimeError, TypeError, ValueError) as error:
                    raise WeightsError(
                        f"{path} has a tensor that cannot be read ({key}: {error}); the file is damaged or was not "
                        "written by flowcli"
                    ) from None
    except (SafetensorError, OSError) as error:  # changed or removed since its header was read
        raise WeightsError(f"{path} cannot be read ({error})") from None
    return meta


def _is_pickle(path: str | Path) -> bool:
    """Whether a file starts as torch.save writes: a zip archive (torch >= 1.6) or a bare pickle (protocol 2-5)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the architecture the metadata names and load the weights strictly (fp32)."""
    meta = read_metadata(path)
    with safe_open(str(path), framework="pt") as f:  # the header: names, shapes and dtypes, no data
        stored_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    lacks = [] if "flowcli.model" in meta else ["flowcli.model metadata (the architecture)"]
    if not stored_shapes:
        lacks.append("tensors (the weights)")
    if lacks:  # flowcli metadata alone reads without an error, yet holds no model
        raise WeightsError(
            f"{path} is not a flowcli model: it has no {' and no '.join(lacks)}; use a checkpoint written by flowcli "
            "(flowcli train, flowcli adapt, flowcli weights average)"
        )
    family = meta.get("flowcli.model")
    if family not in ARCHITECTURES:
        raise WeightsError(f"{path} holds a '{family}' model; this flowcli knows {sorted(ARCHITECTURES)}")
    model_cls, config_cls = ARCHITECTURES[family]
    stored = dict(meta["flowcli.config"])
    if family == "flownet":
        stored.setdefault("normalize_features", False)  # checkpoints made before the field existed
    config = _build_config(config_cls, stored, path)
    try:
        with torch.device("meta"):  # shapes only: a hostile config cannot make it allocate terabytes
            skeleton = model_cls(config)
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        raise WeightsError(f"{path} describes an architecture this flowcli cannot build: {error}") from None
    missing = sorted(set(expected) - set(stored_shapes))
    unexpected = sorted(set(stored_shapes) - set(expected))
    wrong_shape = sorted(k for k in set(stored_shapes) & set(expected) if stored_shapes[k] != expected[k])
    if missing or unexpected or wrong_shape:
        detail = (
            f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
            else f"{wrong_shape[0]} has shape {stored_shapes[wrong_shape[0]]}, expected {expected[wrong_shape[0]]}"
        )
        count = len(missing) + len(unexpected) + len(wrong_shape)
        raise WeightsError(f"{path} does not match its declared architecture ({count} tensors differ; {detail})")
    not_float = sorted(k for k, dtype in dtypes.items() if dtype not in _FLOAT_DTYPES)
    if not_float:
        raise WeightsError(
            f"{path} stores {not_float[0]} as {dtypes[not_float[0]]}; flowcli weights are floating point"
        )
    state = load_file(str(path))
    non_finite = sorted(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
    if non_finite:
        raise WeightsError(
            f"{path} has NaN or infinite values in {len(non_finite)} tensor(s), e.g. {non_finite[0]}; "
            "the training that wrote it diverged or the file is corrupt"
        )
    model = skeleton
    if any(t.is_meta for t in skeleton.state_dict().values()):
        # every parameter and buffer is in `state`, so the skeleton needs memory, not a (slow) random init
        unsaved = {name for name, _ in skeleton.named_buffers()} - set(expected)
        model = model_cls(config) if unsaved else skeleton.to_empty(device="cpu")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.provenance = meta["flowcli.provenance"]
    model.checkpoint_path = str(path)
    return model.to(device).eval()


def _build_config(config_cls, stored: dict, path: str | Path):
    """The config a checkpoint's metadata describes, each field of the type its default has.

    The metadata is untrusted input: `"normalize_features": "no"` must not be taken as true, nor a
    negative or absurdly long channel list reach the network's constructor.
    """
    defaults = field_defaults(config_cls)

    def bad(what: str) -> WeightsError:
        return WeightsError(f"{path} describes an architecture this flowcli cannot build: {what}")

    for name, value in stored.items():
        default = defaults.get(name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_CONFIG_INT
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, tuple):
            ok = (
                isinstance(value, list)
                and len(value) <= _MAX_CONFIG_LENGTH
                and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _MAX_CONFIG_INT for v in value)
            )
        else:
            ok = name not in defaults  # unknown fields: the constructor names them below
        if not ok:
            raise bad(f"{name}={json.dumps(value)[:60]} is not a valid value")
    try:
        return config_cls(**stored)
    except (TypeError, ValueError) as error:
        raise bad(str(error)) from None


def average_checkpoints(paths: list[str | Path], mix: list[float] | None = None) -> torch.nn.Module:
    """Weight-space average of checkpoints of one architecture ("model soup"; Wortsman et al. 2022).

    Meaningful for checkpoints of one training lineage, e.g. a stage and the stage fine-tuned from it.
    A shared-decoder checkpoint mixes with its untied fine-tune (`"shared_decoder": false`): its decoder
    counts as every level's, and the result is untied.
    `mix`: one weight per checkpoint, normalised to sum 1 (default: equal). The result's provenance lists
    its sources, their sha256 and the mix.
    """
    from flowcli.registry import sha256_file

    if len(paths) < 2:
        raise WeightsError("averaging needs at least two checkpoints")
    mix = [1.0] * len(paths) if mix is None else [float(m) for m in mix]
    # a NaN or infinite weight passes `m < 0` and would normalise the others to NaN or 0; it makes the sum non-finite
    if len(mix) != len(paths) or not math.isfinite(sum(mix)) or any(m < 0 for m in mix) or sum(mix) <= 0:
        raise WeightsError(
            f"--mix needs {len(paths)} finite, non-negative weights with a positive sum, e.g. "
            f"{','.join(['1'] * len(paths))}; got {','.join(f'{m:g}' for m in mix)}"
        )
    mix = [m / sum(mix) for m in mix]
    models = [load_checkpoint(path) for path in paths]
    first_untied = next((i for i, model in enumerate(models) if not model.config.shared_decoder), 0)
    averaged, reference = models[first_untied], paths[first_untied]
    states = []
    for path, model in zip(paths, models):
        config, state = model.config, model.state_dict()
        if config.shared_decoder and not averaged.config.shared_decoder:
            # A shared decoder is the untied one with every level equal: average it level by level.
            config = replace(config, shared_decoder=False)
            state = untie_decoder_weights(state, config.decoded_levels)
        if config != averaged.config:
            differ = next(f.name for f in fields(config) if getattr(config, f.name) != getattr(averaged.config, f.name))
            raise WeightsError(
                f"{path} has another architecture than {reference} ({differ} {getattr(config, differ)} against "
                f"{getattr(averaged.config, differ)}); only checkpoints of one architecture can be averaged"
            )
        states.append(state)
    averaged.load_state_dict({key: sum(m * state[key] for m, state in zip(mix, states)) for key in states[0]})
    averaged.provenance = {
        "averaged_from": [
            {"path": str(path), "sha256": sha256_file(path), "weight": round(m, 6), "provenance": model.provenance}
            for path, m, model in zip(paths, mix, models)
        ]
    }
    return averaged


def field_defaults(config_class) -> dict:
    """The default value of each field of a dataclass that has one."""
    defaults = {}
    for f in fields(config_class):
        if f.default is not MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


ABSENT = object()  # a setting one side of `changed_settings` does not have


def changed_settings(saved: dict, current: dict, defaults: dict) -> dict[str, tuple]:
    """The settings of a resumable run whose saved value (`saved`, decoded JSON) differs from `current`:
    name -> (saved value, current value), ABSENT for a side that lacks it.

    A field added to flowcli after the state was saved counts as equal when `current` leaves it at its
    default, so a run interrupted under an older flowcli resumes under a newer one.
    """
    current, defaults = (json.loads(json.dumps(d, sort_keys=True, default=list)) for d in (current, defaults))
    changed = {}
    for name in sorted(set(saved) | set(current)):
        before = saved.get(name, defaults.get(name, ABSENT) if name in current else ABSENT)
        now = current.get(name, ABSENT)
        if before != now:
            changed[name] = (before, now)
    return changed