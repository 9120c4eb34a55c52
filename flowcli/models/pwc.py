"""A PWC-Net-style flow network: feature pyramid, warping, cost volume, coarse-to-fine decoding.

Compact by design (it must run at about half a second per 1024x436 pair on two CPU cores):
one flow decoder shared by all pyramid levels (features reduced to a common width by a 1x1
convolution per level, flow kept in the level's own pixel units, as in ARFlow's PWC-lite), and a
dilated context network on the finest decoded level. The final flow is upsampled to full
resolution bilinearly or, with `upsampler="convex"`, by RAFT's learned convex combination of each
pixel's 3x3 coarse neighbours, which keeps motion boundaries sharp inside the 4x4 cells.

Inputs are RGB in [0, 1], [B, 3, H, W] with H and W multiples of 2**num_levels (inference pads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from flowcli.models.matching import AsymOFMM
from flowcli.ops.correlation import correlation, warp_correlation

MATCHING = ("pwc", "maskflownet")
UPSAMPLERS = ("bilinear", "convex")


@dataclass
class FlowNetConfig:
    matching: str = "pwc"
    pyramid_channels: tuple[int, ...] = (16, 32, 64, 96, 128, 192)
    decoder_channels: tuple[int, ...] = (96, 96, 64, 48, 32)
    context_channels: tuple[int, ...] = (96, 96, 96, 64, 32)
    context_dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    reduced_channels: int = 32
    max_displacement: int = 4
    output_level: int = 2
    # Centre and scale each feature vector before matching, so the cost volume is a correlation
    # coefficient in [-1, 1]. Raw PWC features share a large positive mean that drowns the matching
    # signal (cost contrast ~0.01 at init) and training then sits at "predict zero flow".
    normalize_features: bool = True
    upsampler: str = "bilinear"
    upsampler_channels: tuple[int, ...] = (64, 64)  # widths of the convex upsampler's 3x3 convolutions
    # One decoder for every level (PWC-Net has one per level). Untying them adds parameters, not compute.
    shared_decoder: bool = True

    def __post_init__(self):
        names = ("pyramid_channels", "decoder_channels", "context_channels", "context_dilations", "upsampler_channels")
        for name in names:
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.matching not in MATCHING:
            raise ValueError(f"matching must be one of {MATCHING}, got {self.matching!r}")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        if not self.upsampler_channels or min(self.upsampler_channels) < 1:
            raise ValueError("upsampler_channels must list at least one positive width")
        if len(self.context_channels) != len(self.context_dilations):
            raise ValueError("context_channels and context_dilations must have the same length")
        if not 1 <= self.output_level < len(self.pyramid_channels):
            raise ValueError("output_level must name a pyramid level below the coarsest")

    @property
    def num_levels(self) -> int:
        return len(self.pyramid_channels)

    @property
    def decoded_levels(self) -> list[int]:
        """Pyramid levels the decoder runs at, coarse to fine."""
        return list(range(self.num_levels, self.output_level - 1, -1))

    @property
    def size_multiple(self) -> int:
        return 2**self.num_levels

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def normalize_for_matching(features: torch.Tensor) -> torch.Tensor:
    """Zero-mean, norm sqrt(C) per pixel: correlation (which divides by C) then gives a cosine."""
    centred = features - features.mean(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(centred, dim=1, keepdim=True).clamp_min(1e-6)
    return centred * (features.shape[1] ** 0.5) / norm


def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation)]
    if act:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class FeaturePyramid(nn.Module):
    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        stages, cin = [], 3
        for cout in channels:
            stages.append(nn.Sequential(conv(cin, cout, stride=2), conv(cout, cout)))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Features at levels 1..L (stride 2**level), finest first."""
        features, x = [], image
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class FlowDecoder(nn.Module):
    """Predicts the flow residual (and MaskFlowNet's occlusion logit) from cost volume + context."""

    def __init__(self, cin: int, channels: tuple[int, ...], with_mask: bool):
        super().__init__()
        layers = []
        for cout in channels:
            layers.append(conv(cin, cout))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.out_channels = cin
        self.predict_flow = conv(cin, 2, act=False)
        self.predict_mask = conv(cin, 1, act=False) if with_mask else None

    def forward(self, x: torch.Tensor):
        x = self.body(x)
        mask = self.predict_mask(x) if self.predict_mask is not None else None
        return x, self.predict_flow(x), mask


class ContextNetwork(nn.Module):
    def __init__(self, cin: int, channels: tuple[int, ...], dilations: tuple[int, ...]):
        super().__init__()
        layers = []
        for cout, dilation in zip(channels, dilations):
            layers.append(conv(cin, cout, dilation=dilation))
            cin = cout
        layers.append(conv(cin, 2, act=False))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def bilinear_upsampling_logits(factor: int) -> torch.Tensor:
    """Log-weights [9 * factor**2] that make the convex upsampler reproduce bilinear upsampling.

    Fine pixel (i, j) of a coarse cell sits at offset ((i + 0.5) / factor - 0.5) from the cell
    centre (align_corners=False), so it blends the centre with one neighbour along each axis.
    """
    # on the CPU even inside a `torch.device("meta")` block (the checkpoint loader's shape check)
    offsets = (torch.arange(factor, dtype=torch.float64, device="cpu") + 0.5) / factor - 0.5
    taps = torch.zeros(factor, 3, dtype=torch.float64, device="cpu")  # per fine position: weights of coarse -1, 0, +1
    for i, o in enumerate(offsets.tolist()):
        taps[i, 1] = 1 - abs(o)
        taps[i, 0 if o < 0 else 2] = abs(o)
    weights = torch.einsum("ia,jb->abij", taps, taps).reshape(9 * factor * factor)  # [3, 3, fy, fx]
    return torch.log(weights + 1e-4).float()


class ConvexUpsampler(nn.Module):
    """RAFT's convex upsampling: each fine pixel is a softmax-weighted mix of its 3x3 coarse flows.

    The weights come from the decoder's features, the image features of the level and the image
    itself folded into the coarse grid (pixel_unshuffle), which says where inside a cell an edge runs.
    Initialised to reproduce bilinear upsampling exactly, so adding it to a trained model changes
    nothing until it is trained.
    """

    def __init__(self, cin: int, factor: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.factor = factor
        widths = (cin + 3 * factor * factor, *hidden)
        self.body = nn.Sequential(*(conv(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.weights = nn.Conv2d(widths[-1], 9 * factor * factor, 1)
        self.weights.keep_init = True
        nn.init.zeros_(self.weights.weight)
        with torch.no_grad():
            self.weights.bias.copy_(bilinear_upsampling_logits(factor))

    def forward(self, flow: torch.Tensor, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """flow [B, 2, h, w] in coarse pixels -> [B, 2, h * factor, w * factor] in fine pixels."""
        b, _, h, w = flow.shape
        r = self.factor
        x = torch.cat((features, F.pixel_unshuffle(image, r)), dim=1)
        # The unshuffled image is NCHW; give the convolutions the weights' layout (channels-last at
        # CPU inference), else oneDNN converts on every call (0.10 -> 0.07 s at 1024x448).
        x = x.contiguous(memory_format=_layout(self.body[0][0].weight))
        logits = self.weights(self.body(x))  # [B, 9 * r * r, h, w], channel = neighbour * r * r + sub-pixel
        # Pixel-major views are free for channels-last logits and make the mix one batched matmul.
        mix = torch.softmax(logits.permute(0, 2, 3, 1).reshape(b, h, w, 9, r * r), dim=3)
        # Replicate padding matches bilinear interpolation's clamping at the border.
        neighbours = F.unfold(F.pad(r * flow, (1, 1, 1, 1), mode="replicate"), 3).view(b, 2, 9, h, w)
        fine = neighbours.permute(0, 3, 4, 1, 2) @ mix  # [B, h, w, 2, r * r]
        return fine.view(b, h, w, 2, r, r).permute(0, 3, 1, 4, 2, 5).reshape(b, 2, h * r, w * r)


def _layout(weight: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


@dataclass
class FlowOutput:
    flow: torch.Tensor  # [B, 2, H, W] full resolution, pixels
    level_flows: dict[int, torch.Tensor] = field(default_factory=dict)  # level -> flow in that level's pixels
    occlusion_logit: torch.Tensor | None = None  # [B, 1, H, W] (maskflownet only), > 0 = occluded


class FlowNet(nn.Module):
    def __init__(self, config: FlowNetConfig | None = None):
        super().__init__()
        self.config = config = config or FlowNetConfig()
        self.pyramid = FeaturePyramid(config.pyramid_channels)
        self.levels = config.decoded_levels
        self.reduce = nn.ModuleDict(
            {str(lvl): nn.Conv2d(config.pyramid_channels[lvl - 1], config.reduced_channels, 1) for lvl in self.levels}
        )
        num_corr = (2 * config.max_displacement + 1) ** 2
        with_mask = config.matching == "maskflownet"
        decoder_in = num_corr + config.reduced_channels + 2
        if config.shared_decoder:
            self.decoder = FlowDecoder(decoder_in, config.decoder_channels, with_mask)
            decoders = [self.decoder]
        else:
            self.decoders = nn.ModuleDict(
                {str(lvl): FlowDecoder(decoder_in, config.decoder_channels, with_mask) for lvl in self.levels}
            )
            decoders = list(self.decoders.values())
        decoder_out = decoders[0].out_channels
        if with_mask:
            self.matching = nn.ModuleDict(
                {str(lvl): AsymOFMM(config.pyramid_channels[lvl - 1], decoder_out) for lvl in self.levels[1:]}
            )
        else:
            self.matching = None
        self.context = ContextNetwork(decoder_out + 2, config.context_channels, config.context_dilations)
        if config.upsampler == "convex":
            cin = decoder_out + 2 + config.pyramid_channels[config.output_level - 1]
            self.upsampler = ConvexUpsampler(cin, 2**config.output_level, config.upsampler_channels)
        else:
            self.upsampler = None
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for the leaky ReLUs. PyTorch's default shrinks activations through the pyramid so
        # much that the coarse cost volumes start near 1e-5 and training sits at "predict zero".
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and not getattr(module, "keep_init", False):
                nn.init.kaiming_normal_(module.weight, a=0.1, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        # Start the flow heads near zero: large random initial flows are unlearned first, and the
        # network collapses to predicting zero before it learns to read the cost volume.
        heads = [self.context.body[-1][0]]
        for lvl in self.levels:
            decoder = self.decoder_at(lvl)
            heads.append(decoder.predict_flow[0])
            if decoder.predict_mask is not None:
                heads.append(decoder.predict_mask[0])
        for head in heads:
            nn.init.normal_(head.weight, std=1e-3)

    def decoder_at(self, level: int) -> FlowDecoder:
        return self.decoder if self.config.shared_decoder else self.decoders[str(level)]

    def train(self, mode: bool = True) -> "FlowNet":
        """Also sets the weights' memory layout: channels-last for inference on CPU.

        oneDNN's convolutions run faster on channels-last weights at inference (0.57 -> 0.43 s per
        1024x436 pair on 2 cores, benchmarks/cpu_inference_ab.py), but their backward is slower that way,
        so training keeps NCHW.
        """
        super().train(mode)
        on_cpu = next(self.parameters()).device.type == "cpu"
        return self.to(memory_format=torch.channels_last if on_cpu and not mode else torch.contiguous_format)

    @staticmethod
    def normalize(image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = 0.5 * (image1.mean(dim=(2, 3), keepdim=True) + image2.mean(dim=(2, 3), keepdim=True))
        return (image1 - mean) / 0.25, (image2 - mean) / 0.25

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> FlowOutput:
        cfg = self.config
        image1, image2 = self.normalize(image1, image2)
        b, _, h, w = image1.shape
        if h % cfg.size_multiple or w % cfg.size_multiple:
            raise ValueError(f"image size {h}x{w} must be a multiple of {cfg.size_multiple}; pad it first")
        # One pass for both images keeps batch norm-free convs efficient on CPU.
        pyramid = self.pyramid(torch.cat((image1, image2), dim=0))
        flow = mask = decoder_feature = None
        level_flows = {}
        for lvl in self.levels:
            f1, f2 = pyramid[lvl - 1][:b], pyramid[lvl - 1][b:]
            m1, m2 = (normalize_for_matching(f1), normalize_for_matching(f2)) if cfg.normalize_features else (f1, f2)
            if flow is None:
                # in the features' layout, so that every decoder input is channels-last at CPU inference:
                # one NCHW input makes torch.cat give NCHW, which oneDNN then converts before each convolution
                flow = f1.new_zeros(b, 2, f1.shape[2], f1.shape[3]).contiguous(memory_format=_layout(f1))
                cost = correlation(m1, m2, cfg.max_displacement)
            else:
                flow = 2.0 * F.interpolate(flow, size=f1.shape[-2:], mode="bilinear", align_corners=False)
                if self.matching is not None:
                    mask = F.interpolate(mask, size=f1.shape[-2:], mode="bilinear", align_corners=False)
                    decoder_feature = F.interpolate(
                        decoder_feature, size=f1.shape[-2:], mode="bilinear", align_corners=False
                    )
                    warped = self.matching[str(lvl)](m2, flow, mask, decoder_feature)
                    cost = correlation(m1, warped, cfg.max_displacement)
                else:  # warp + correlation, fused into one kernel on GPU
                    cost = warp_correlation(m1, m2, flow, cfg.max_displacement)
            cost = F.leaky_relu(cost, 0.1)
            x = torch.cat((cost, self.reduce[str(lvl)](f1), flow), dim=1)
            decoder_feature, delta, mask = self.decoder_at(lvl)(x)
            flow = flow + delta
            if lvl == cfg.output_level:
                flow = flow + self.context(torch.cat((decoder_feature, flow), dim=1))
            level_flows[lvl] = flow
        if self.upsampler is not None:
            full = self.upsampler(flow, torch.cat((decoder_feature, flow, f1), dim=1), image1)
        else:
            # flow is channels-last at CPU inference; callers get NCHW
            full = 2**cfg.output_level * F.interpolate(
                flow.contiguous(), size=(h, w), mode="bilinear", align_corners=False
            )
        occlusion = None
        if mask is not None:
            # MaskFlowNet's mask is ~1 where f2 is trusted (visible); occlusion logit is its negation.
            occlusion = -F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
        return FlowOutput(flow=full, level_flows=level_flows, occlusion_logit=occlusion)


def untie_decoder_weights(state_dict: dict[str, torch.Tensor], levels: list[int]) -> dict[str, torch.Tensor]:
    """A shared-decoder state dict as per-level decoders, each a copy of the shared one.

    The untied model then computes exactly what the shared one did, and fine-tuning lets each level
    specialise (the coarse levels, which must catch small fast objects, most of all).
    """
    untied = {}
    for name, value in state_dict.items():
        if name.startswith("decoder."):
            for lvl in levels:
                untied[f"decoders.{lvl}.{name[len('decoder.'):]}"] = value.clone()
        else:
            untied[name] = value
    return untied
