"""Motion-based video object segmentation by contextual information separation (CIS).

- :class:`MaskGenerator` ``G(image, flow)`` → 2-way mask logits (a U-Net with a dilated bottleneck).
- :class:`FlowInpainter` ``I(image, masked flow, mask)`` → flow (two encoders, one decoder).
- :class:`MotionVOSModel` trains both adversarially (see :mod:`densessl.losses.cis`): in each
  cycle of ``generator_steps + 1`` steps the generator takes ``generator_steps`` steps and the
  inpainter one.
- :func:`orient_foreground` picks foreground versus background without ground truth (the
  loss is symmetric in ``m`` and ``1−m``): a mask covering at least 60 % of a thin image border
  is background, so its complement is taken.

Images enter as ``B×3×H×W`` RGB in [0, 1] and flows as ``B×2×H×W`` pixels at the input
resolution; :meth:`MotionVOSModel.normalize` divides the flow by ``flow_scale · W`` so that the
loss's ``ε`` and the networks see the same magnitudes at any resolution (the reference divides
by 80 at a width of 384: ``flow_scale = 80 / 384``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.datasets.motion_pairs import resize_flow, resize_image
from densessl.losses.cis import REFERENCE_EPSILON_PER_ELEMENT, CISTerms, cis_terms
from densessl.models.ema import update_ema_, warmed_up_decay
from densessl.models.modes import eval_mode
from densessl.models.unet import Decoder, DilatedBottleneck, Encoder, UNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_FLOW_SCALE = 80.0 / 384.0
BORDER_FRACTION = 0.6
NORMALIZERS = ("image_only", "zero")
CONTEXT_FITS = ("none", "mean", "affine")


@dataclass
class MotionVOSNetConfig:
    """Network and loss settings (the ``model`` section of ``configs/motion_vos.yaml``)."""

    generator_widths: tuple[int, ...] = (32, 64, 128, 256)
    inpainter_widths: tuple[int, ...] = (32, 64, 128, 256)
    dilations: tuple[int, ...] = (2, 4, 8)
    norm: str = "batch"
    mask_temperature: float = 10.0  # logits are divided by this before the softmax
    flow_scale: float = REFERENCE_FLOW_SCALE  # flow / (flow_scale × width)
    epsilon_per_element: float = REFERENCE_EPSILON_PER_ELEMENT
    generator_steps: int = 3  # generator steps per inpainter step
    inpainter_warmup_steps: int = 0  # inpainter-only steps before the adversarial schedule
    hard_context: bool = True  # the inpainter sees the thresholded mask (straight-through gradient)
    hard_weights: bool = False  # E and D weighted by the thresholded mask (straight-through gradient)
    normalizer: str = "image_only"  # D(m) from the image-only inpainter, or "zero": from zero flow (|u|)
    input_stride: int = 2  # the networks and the loss work at 1/input_stride of the input size
    cap_ratio: bool = True  # generator loss with min(E/D, 1) (see densessl.losses.cis); reference: False
    generator_flow_norm: bool = True  # the generator sees each sample's flow standardised (mean 0, RMS 1)
    generator_camera_fit: str = "none"  # none | affine | quadratic: the generator sees the flow minus a robust camera fit
    inpainter_context: str = "mean"  # none (reference) | mean | affine: the fit of the visible flow the inpainter corrects
    min_hidden_fraction: float = 0.0  # hard_context: each call hides at least this fraction (its likeliest pixels)
    generator_ema: float = 0.0  # > 0: predict with an exponential moving average of the generator's weights (this decay)
    # the generator steps among the first N steps fit the camera-compensated baseline's masks
    # (cross-entropy) instead of the CIS loss: a start from masks the objective already prefers
    generator_warm_start_steps: int = 0
    # in an inpainter step, this fraction of the batch fills a random ellipse instead of the
    # generator's mask: an inpainter trained on the generator's masks alone can be fooled by new ones
    inpainter_random_masks: float = 0.0

    def validate(self) -> None:
        """InputError naming the first bad setting (as ``model.<key>``)."""
        from densessl.errors import InputError
        from densessl.models.unet import NORMS

        if self.norm not in NORMS:
            raise InputError(f"model.norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.generator_camera_fit not in GENERATOR_CAMERA_FITS:
            raise InputError(f"model.generator_camera_fit must be one of {', '.join(GENERATOR_CAMERA_FITS)}, "
                             f"got {self.generator_camera_fit!r}")
        if self.inpainter_context not in CONTEXT_FITS:
            raise InputError(f"model.inpainter_context must be one of {', '.join(CONTEXT_FITS)}, "
                             f"got {self.inpainter_context!r}")
        if self.normalizer not in NORMALIZERS:
            raise InputError(f"model.normalizer must be one of {', '.join(NORMALIZERS)}, got {self.normalizer!r}")
        if self.generator_warm_start_steps < 0:
            raise InputError(f"model.generator_warm_start_steps must be >= 0, got {self.generator_warm_start_steps}")
        for key in ("generator_steps", "input_stride"):
            if getattr(self, key) < 1:
                raise InputError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.generator_ema < 1.0:
            raise InputError(f"model.generator_ema must lie in [0, 1) (0: off), got {self.generator_ema}")
        if not 0.0 <= self.inpainter_random_masks <= 1.0:
            raise InputError(f"model.inpainter_random_masks must lie in [0, 1], got {self.inpainter_random_masks}")
        if not 0.0 <= self.min_hidden_fraction < 1.0:
            raise InputError(f"model.min_hidden_fraction must lie in [0, 1), got {self.min_hidden_fraction}")
        for key in ("mask_temperature", "flow_scale", "epsilon_per_element"):
            if not getattr(self, key) > 0:
                raise InputError(f"model.{key} must be > 0, got {getattr(self, key)}")
        if not self.generator_widths or not self.inpainter_widths:
            raise InputError("model.generator_widths and model.inpainter_widths must not be empty")


PARAMETRIC_MOTION_MODELS = ("affine", "quadratic")
GENERATOR_CAMERA_FITS = ("none",) + PARAMETRIC_MOTION_MODELS
CAMERA_FIT_MIN_SCALE = 0.1 / 80.0  # normalised flow units: 0.1 px at the reference's scale
FLOW_STAT_FLOOR = 1e-4  # normalised flow units: 0.008 px at a width of 384 with the reference scale
SPREAD_FLOOR_FRACTION = 0.1  # a uniform (pure translation) flow is scaled by 0.1 × its magnitude


def standardize_flow(flow: Tensor) -> Tensor:
    """Each sample's ``B×2×H×W`` flow minus its mean (per component), divided by the RMS of the
    result over both components (plus a small floor): the motion pattern, whatever its magnitude."""
    centred = flow - flow.mean(dim=(2, 3), keepdim=True)
    spread = (centred.square().mean(dim=(1, 2, 3), keepdim=True) + FLOW_STAT_FLOOR**2).sqrt()
    return centred / spread


def context_flow_fit(masked_flow: Tensor, hidden: Tensor, model: str = "mean") -> tuple[Tensor, Tensor]:
    """A fit of the flow visible outside ``hidden``, everywhere, and the size of what it leaves.

    Args:
        masked_flow: ``B×2×H×W`` flow (only the visible pixels are read).
        hidden: ``B×1×H×W`` in [0, 1]; the visible weight of a pixel is ``1 − hidden``.
        model: ``mean`` (one translation per sample) or ``affine`` (``u = a + b·x + c·y`` per
            component over coordinates in [-1, 1]; weighted least squares, closed form).
    Returns:
        ``fit`` (``B×2×H×W``) and ``scale`` (``B×1×1×1``): the visible flow's RMS deviation from the
        fit plus 0.1 × its RMS magnitude (so a perfectly fitted field is not divided by ~0) plus a
        small floor. A sample with no visible flow gets fit 0 and scale 1. Nothing inside
        ``hidden`` enters either. Computed in float32 (also under autocast).
    """
    if model not in ("mean", "affine"):
        raise ValueError(f"model must be 'mean' or 'affine', got {model!r}")
    masked_flow, hidden = masked_flow.float(), hidden.float()
    visible = 1.0 - hidden
    count = visible.sum(dim=(2, 3), keepdim=True)
    has_context = (count > 0.5).to(masked_flow.dtype)
    count = count.clamp(min=1.0)
    if model == "mean":
        fit = (masked_flow * visible).sum(dim=(2, 3), keepdim=True) / count * has_context
        fit = fit.expand_as(masked_flow)
    else:
        basis = torch.cat([torch.ones_like(hidden), coordinate_grid(hidden)], dim=1)  # B×3×H×W
        with torch.autocast(masked_flow.device.type, enabled=False):
            gram = torch.einsum("bihw,bjhw->bij", basis * visible, basis)
            moments = torch.einsum("bihw,bchw->bic", basis * visible, masked_flow)
            # a small ridge keeps a degenerate context (a line, a few pixels) solvable
            ridge = 1e-4 * count.view(-1, 1, 1) * torch.eye(3, dtype=gram.dtype, device=gram.device)
            params = torch.linalg.solve(gram + ridge, moments)  # B×3×2
            fit = torch.einsum("bihw,bic->bchw", basis, params) * has_context.view(-1, 1, 1, 1)
    residual = ((masked_flow - fit).square() * visible).sum(dim=(1, 2, 3), keepdim=True) / (2 * count)
    magnitude = (masked_flow.square() * visible).sum(dim=(1, 2, 3), keepdim=True) / (2 * count)
    scale = (residual + FLOW_STAT_FLOOR**2).sqrt() + SPREAD_FLOOR_FRACTION * (magnitude + FLOW_STAT_FLOOR**2).sqrt()
    return fit, scale * has_context + (1.0 - has_context)


class MaskGenerator(nn.Module):
    """``B×3×H×W`` image and ``B×2×H×W`` flow (both normalised) → ``B×2×H×W`` logits.

    ``camera_fit`` (``affine`` or ``quadratic``): the network sees the flow minus a robust fit of
    the dominant (camera) motion (:func:`robust_motion_fit`), the motion that the scene does not
    explain; ``none`` (the reference): the flow itself.
    ``flow_norm``: the flow is then standardised per sample (:func:`standardize_flow`) before it
    enters the network, so slow and fast videos give inputs of the same size.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        dilations: Sequence[int] = (2, 4, 8),
        norm: str = "batch",
        temperature: float = 10.0,
        flow_norm: bool = False,
        camera_fit: str = "none",
    ) -> None:
        super().__init__()
        if camera_fit not in GENERATOR_CAMERA_FITS:
            raise ValueError(f"camera_fit must be one of {', '.join(GENERATOR_CAMERA_FITS)}, got {camera_fit!r}")
        self.temperature = float(temperature)
        self.flow_norm = flow_norm
        self.camera_fit = camera_fit
        self.unet = UNet(5, 2, widths, dilations, norm)

    def forward(self, image: Tensor, flow: Tensor) -> Tensor:
        if self.camera_fit != "none":
            flow = flow - robust_motion_fit(flow, self.camera_fit, min_scale=CAMERA_FIT_MIN_SCALE)
        if self.flow_norm:
            flow = standardize_flow(flow)
        return self.unet(torch.cat([image, flow], dim=1))

    def mask(self, logits: Tensor) -> Tensor:
        """Soft mask ``B×1×H×W``: the second channel of ``softmax(logits / temperature)``."""
        return torch.softmax(logits.float() / self.temperature, dim=1)[:, 1:2]


def coordinate_grid(like: Tensor) -> Tensor:
    """``B×2×H×W`` pixel coordinates ``(x, y)`` scaled to [-1, 1], in ``like``'s dtype and device."""
    b, _, h, w = like.shape
    ys = torch.linspace(-1.0, 1.0, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))
    return grid.unsqueeze(0).expand(b, -1, -1, -1)


class FlowInpainter(nn.Module):
    """Predicts flow from the image and the flow visible outside a mask.

    An image encoder and a (masked flow, mask) encoder run side by side; their features are
    concatenated at every stride, a dilated bottleneck widens the context at the coarsest one,
    and a U-Net decoder predicts ``B×2×H×W`` flow.

    ``context`` (``mean`` or ``affine``): the network corrects a fit of the visible flow. The
    visible flow enters as ``(u − fit) / s`` and the output leaves as ``fit + s · out``, with
    ``fit, s`` from :func:`context_flow_fit` of the visible flow only. Predicting zero then fills
    the hole with the context's mean (or affine) motion, so a panning (or zooming) camera is
    solved at initialisation, and the network sees flow of unit size at any magnitude.
    ``none``: the flow enters as it is (the reference).
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        dilations: Sequence[int] = (2, 4, 8),
        norm: str = "batch",
        context: str = "none",
    ) -> None:
        super().__init__()
        if context not in CONTEXT_FITS:
            raise ValueError(f"context must be one of {', '.join(CONTEXT_FITS)}, got {context!r}")
        self.context = context
        self.image_encoder = Encoder(3, widths, norm)
        self.flow_encoder = Encoder(5, widths, norm)
        fused = [2 * w for w in widths]
        self.bottleneck = DilatedBottleneck(fused[-1], dilations, norm)
        self.decoder = Decoder(fused, 2, norm)

    def encode_image(self, image: Tensor) -> list[Tensor]:
        return self.image_encoder(image)

    def decode(self, image_features: Sequence[Tensor], masked_flow: Tensor, hidden: Tensor) -> Tensor:
        """``hidden`` (``B×1×H×W``) marks where the flow is to be predicted."""
        if self.context != "none":
            fit, scale = context_flow_fit(masked_flow, hidden, self.context)
            masked_flow = (masked_flow - fit) / scale * (1.0 - hidden)
        flow_features = self.flow_encoder(torch.cat([masked_flow, hidden, coordinate_grid(hidden)], dim=1))
        features = [torch.cat([a, b], dim=1) for a, b in zip(image_features, flow_features)]
        features[-1] = self.bottleneck(features[-1])
        out = self.decoder(features)
        return fit + scale * out if self.context != "none" else out

    def forward(self, image: Tensor, masked_flow: Tensor, hidden: Tensor) -> Tensor:
        return self.decode(self.encode_image(image), masked_flow, hidden)


def hide_region(soft: Tensor, min_fraction: float = 0.0) -> Tensor:
    """``B×1×H×W`` {0, 1}: where ``soft > 0.5``, and at least the ``min_fraction`` of each sample's
    pixels with the highest ``soft`` (so that an undecided mask, below 0.5 everywhere, still hides
    its likeliest region instead of nothing)."""
    hard = soft > 0.5
    if min_fraction > 0:
        flat = soft.detach().flatten(1)
        k = max(1, math.ceil(min_fraction * flat.shape[1]))
        kth_largest = flat.topk(k, dim=1).values[:, -1].view(-1, 1, 1, 1)
        hard = hard | (soft >= kth_largest)
    return hard.to(soft.dtype)


RANDOM_MASK_AREA = (0.05, 0.4)  # fraction of the frame an ellipse of inpainter_random_masks covers


def random_ellipse_masks(
    count: int, height: int, width: int, area: tuple[float, float] = RANDOM_MASK_AREA,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``count×1×height×width`` {0, 1} masks, each an axis-aligned ellipse inside the frame that
    covers a uniform fraction in ``area`` of it (less where it would not fit), its width-to-height
    ratio 1/2 to 2 times the frame's (from the global RNG, on ``device``)."""
    fraction = torch.empty(count, device=device).uniform_(*area)
    log_ratio = torch.empty(count, device=device).uniform_(-math.log(2.0), math.log(2.0))
    # π·ry·rx = fraction·H·W with rx/ry = ratio·W/H (the ellipse keeps the frame's shape at ratio 1)
    ry = torch.sqrt(fraction * height * height / (math.pi * log_ratio.exp()))
    rx = torch.sqrt(fraction * width * width * log_ratio.exp() / math.pi)
    ry, rx = ry.clamp(max=height / 2), rx.clamp(max=width / 2)  # inside the frame
    cy = ry + torch.rand(count, device=device) * (height - 2 * ry)
    cx = rx + torch.rand(count, device=device) * (width - 2 * rx)
    yy = torch.arange(height, device=device, dtype=torch.float32).view(1, -1, 1) + 0.5
    xx = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, -1) + 0.5
    inside = ((yy - cy.view(-1, 1, 1)) / ry.view(-1, 1, 1)) ** 2 + ((xx - cx.view(-1, 1, 1)) / rx.view(-1, 1, 1)) ** 2
    return (inside <= 1.0).unsqueeze(1).to(dtype)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(flag)


def _rename_legacy_step_counter(module: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    """Checkpoints written when the step counter was a buffer keep it under ``steps_done``."""
    legacy = state_dict.pop(prefix + "steps_done", None)
    if legacy is not None and prefix + "_extra_state" not in state_dict:
        state_dict[prefix + "_extra_state"] = legacy


class MotionVOSModel(nn.Module):
    """Generator + inpainter with the CIS adversarial schedule; ``forward(batch) -> (loss, metrics)``.

    ``batch``: ``{"image": B×3×H×W in [0, 1], "flow": B×2×H×W pixels}``. The step counter
    (``steps_done``, a host int) is saved in the state dict, so the schedule survives
    checkpoints. In a generator step the inpainter's weights are taken out of the graph (their
    gradients stay None, so the optimizer leaves them alone); in an inpainter step the mask is
    computed without gradients.

    With ``generator_ema > 0`` a copy of the generator (``generator_ema``, never trained, saved in
    the state dict) follows an exponential moving average of its weights, updated after every
    generator step (:meth:`after_optimizer_step`, called by the trainer), and predictions
    (:meth:`foreground_logits`, :attr:`inference_generator`) use it.

    With ``generator_warm_start_steps = N > 0`` the generator steps among the first N steps
    minimise the cross-entropy between the soft mask and the camera-compensated baseline's mask
    of the same flow (:func:`camera_compensated_target`; no annotation is used) instead of the CIS
    loss; the inpainter steps are unchanged, so it learns to fill those masks meanwhile.
    """

    def __init__(self, config: MotionVOSNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or MotionVOSNetConfig()
        cfg.validate()
        self.config = cfg
        self.generator = MaskGenerator(cfg.generator_widths, cfg.dilations, cfg.norm, cfg.mask_temperature,
                                       cfg.generator_flow_norm, cfg.generator_camera_fit)
        self.inpainter = FlowInpainter(cfg.inpainter_widths, cfg.dilations, cfg.norm, cfg.inpainter_context)
        self.generator_ema: MaskGenerator | None = None
        if cfg.generator_ema > 0:
            # requires_grad False: the optimizer (and DDP) leave the average alone
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # the schedule's step counter lives on the host (a buffer on a GPU would be read back, and
        # the host would wait for the GPU, at every step); it is saved as the module's extra state
        self.steps_done = 0
        self.register_load_state_dict_pre_hook(_rename_legacy_step_counter)

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.steps_done, dtype=torch.long)

    def set_extra_state(self, state: Tensor) -> None:
        self.steps_done = int(state)

    def normalize(self, image: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        """Image → ImageNet-normalised; flow (pixels) → flow / (flow_scale × width); both resized
        by ``1 / input_stride`` (the normalised flow does not change under resizing)."""
        image = (image - self.mean) / self.std
        flow = flow / (self.config.flow_scale * flow.shape[-1])
        stride = self.config.input_stride
        if stride > 1:
            size = (max(1, image.shape[-2] // stride), max(1, image.shape[-1] // stride))
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
            flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False, antialias=True)
        return image, flow

    @property
    def inference_generator(self) -> MaskGenerator:
        """The generator that predictions use: the moving average when there is one."""
        return self.generator if self.generator_ema is None else self.generator_ema

    def foreground_logits(self, image: Tensor, flow: Tensor) -> Tensor:
        """Logits of :attr:`inference_generator` from raw inputs (image in [0, 1], flow in
        pixels), at 1/input_stride."""
        image, flow = self.normalize(image, flow)
        return self.inference_generator(image, flow)

    def generator_steps_before(self, step: int) -> int:
        """How many of the steps ``0 .. step−1`` train the generator."""
        cfg = self.config
        adversarial = max(0, step - cfg.inpainter_warmup_steps)
        cycles, rest = divmod(adversarial, cfg.generator_steps + 1)
        return cycles * cfg.generator_steps + min(rest, cfg.generator_steps)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """After the optimizer has stepped: fold a generator step's new weights into the average."""
        # the counter has already counted the step just taken (step number steps_done − 1)
        if self.generator_ema is None or self.steps_done == 0 or self.is_inpainter_step(self.steps_done - 1):
            return
        updates = self.generator_steps_before(self.steps_done) - 1  # the earlier updates, for the warm-up
        update_ema_(self.generator_ema, self.generator, warmed_up_decay(self.config.generator_ema, updates))

    def is_inpainter_step(self, step: int) -> bool:
        cfg = self.config
        if step < cfg.inpainter_warmup_steps:
            return True
        return (step - cfg.inpainter_warmup_steps) % (cfg.generator_steps + 1) == cfg.generator_steps

    # under torch.compile, reading the counter in the graph would recompile at every step (a guard
    # on its value): it is read here only, and the graph sees the two flags
    @torch.compiler.disable
    def _advance_schedule(self) -> tuple[bool, bool]:
        """Whether this call trains the inpainter, and whether it is a generator warm-start call;
        a call in training mode counts a step."""
        warm_start = self.training and self.steps_done < self.config.generator_warm_start_steps
        inpainter_step = self.is_inpainter_step(self.steps_done)
        if self.training:
            self.steps_done += 1
        return inpainter_step, warm_start

    def _reconstruct(self, image: Tensor, flow: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The inpainter calls of the loss in one batch (the image is encoded once): inside the
        mask, inside its complement, and (``normalizer='image_only'``) with no flow at all."""
        b = image.shape[0]
        inside, outside = mask, 1.0 - mask
        if self.config.hard_context:  # straight-through: hard values forward, soft gradients back
            fraction = self.config.min_hidden_fraction
            inside = inside + (hide_region(inside, fraction) - inside).detach()
            outside = outside + (hide_region(outside, fraction) - outside).detach()
        masked = [flow * (1.0 - inside), flow * (1.0 - outside)]
        hidden = [inside, outside]
        if self.config.normalizer == "image_only":
            masked.append(torch.zeros_like(flow))
            hidden.append(torch.ones_like(mask))
        calls = len(masked)
        image_features = [f.repeat(calls, 1, 1, 1) for f in self.inpainter.encode_image(image)]
        recon = self.inpainter.decode(image_features, torch.cat(masked), torch.cat(hidden))
        image_only = recon[2 * b :] if calls == 3 else torch.zeros_like(flow)
        return recon[:b], recon[b : 2 * b], image_only

    def terms(self, image: Tensor, flow: Tensor, mask: Tensor) -> CISTerms:
        """The CIS terms of ``mask`` (``B×1×h×w`` in [0, 1]) under this model's inpainter, ε and
        cap, so ``generator_loss`` is what the generator minimises; ``image`` and ``flow`` are
        normalised inputs (:meth:`normalize`)."""
        recon = self._reconstruct(image, flow, mask)
        if self.config.hard_weights:  # straight-through: the thresholded mask's terms, the soft mask's gradients
            mask = mask + (hide_region(mask) - mask).detach()
        return cis_terms(flow, mask, *recon, epsilon_per_element=self.config.epsilon_per_element,
                         cap_ratio=self.config.cap_ratio)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        image, flow = self.normalize(batch["image"], batch["flow"])
        inpainter_step, warm_start = self._advance_schedule()
        if inpainter_step:
            with torch.no_grad():
                mask = self.generator.mask(self.generator(image, flow))
                random_count = round(self.config.inpainter_random_masks * mask.shape[0])
                if self.training and random_count > 0:  # the batch is shuffled: the first samples
                    ellipses = random_ellipse_masks(random_count, *mask.shape[-2:], device=mask.device,
                                                    dtype=mask.dtype)
                    mask = torch.cat([ellipses, mask[random_count:]])
            terms = self.terms(image, flow, mask)
        else:
            _set_requires_grad(self.inpainter, False)
            try:
                logits = self.generator(image, flow)
                mask = self.generator.mask(logits)
                with torch.set_grad_enabled(not warm_start):  # warm start: the terms are only logged
                    terms = self.terms(image, flow, mask)
            finally:
                _set_requires_grad(self.inpainter, True)
        if inpainter_step:
            loss = terms.inpainter_loss
        elif warm_start:  # the mask's cross-entropy: logit of the foreground = (l₁ − l₀) / temperature
            target = camera_compensated_target(flow, CAMERA_FIT_MIN_SCALE)
            foreground_logit = (logits[:, 1:2] - logits[:, :1]).float() / self.generator.temperature
            loss = F.binary_cross_entropy_with_logits(foreground_logit, target)
        else:
            loss = terms.generator_loss
        metrics = {
            "loss": terms.generator_loss.detach(),
            "inpainter_loss": terms.inpainter_loss.detach(),
            "mask_mean": mask.detach().mean(),
            "inpainter_step": torch.tensor(float(inpainter_step)),
        }
        return loss, metrics


@dataclass
class CISView:
    """What the generator and the inpainter do on a few pairs, for pictures (all CPU numpy, at the
    networks' resolution): ``images`` B×h×w×3 uint8; ``flows`` B×h×w×2 and ``inpainted``
    B×h×w×2, the normalised flow and the inpainter's reconstruction of it from the context of
    the generator's mask; ``masks`` B×h×w, the generator's soft mask (what it hides)."""

    images: np.ndarray
    flows: np.ndarray
    masks: np.ndarray
    inpainted: np.ndarray


@torch.no_grad()
def cis_view(model: MotionVOSModel, image: Tensor, flow: Tensor) -> CISView:
    """The training generator's masks and the inpainter's reconstructions for ``image``
    (B×3×H×W in [0, 1]) and ``flow`` (B×2×H×W, pixels), in eval mode (the mode is restored)."""
    with eval_mode(model):
        normalized_image, normalized_flow = model.normalize(image, flow)
        mask = model.generator.mask(model.generator(normalized_image, normalized_flow))
        inside, _, _ = model._reconstruct(normalized_image, normalized_flow, mask)
    size = normalized_flow.shape[-2:]
    small = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    return CISView(
        images=(small.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy(),
        flows=normalized_flow.float().permute(0, 2, 3, 1).cpu().numpy(),
        masks=mask[:, 0].float().cpu().numpy(),
        inpainted=inside.float().permute(0, 2, 3, 1).cpu().numpy(),
    )


# ------------------------------------------------------------------------------- inference


def border_width(height: int, width: int) -> int:
    """Width of the border band used by :func:`orient_foreground`: 2 % of the shorter side, ≥ 1."""
    return max(1, round(0.02 * min(height, width)))


def border_coverage(prob: np.ndarray, band: int | None = None) -> float:
    """Fraction of the border band's pixels where ``prob > 0.5`` (``prob`` is ``H×W``)."""
    height, width = prob.shape
    band = border_width(height, width) if band is None else band
    ring = np.ones((height, width), dtype=bool)
    ring[band : height - band, band : width - band] = False
    return float((prob[ring] > 0.5).mean())


def orient_foreground(prob: np.ndarray, threshold: float = BORDER_FRACTION) -> np.ndarray:
    """``H×W`` foreground probability, complemented when the mask covers ≥ ``threshold`` of the border."""
    return 1.0 - prob if border_coverage(prob) >= threshold else prob


def frame_inputs(
    image: np.ndarray, flow: np.ndarray, size: tuple[int, int], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """One frame (``H×W×3`` uint8 RGB) and its flow (``H×W×2`` pixels) resized to the network
    input ``size`` as the training pairs are → ``1×3×h×w`` image in [0, 1], ``1×2×h×w`` flow
    (pixels at the new size), the raw inputs of :meth:`MotionVOSModel.normalize`."""
    if flow.shape[:2] != image.shape[:2]:
        raise ValueError(f"flow size {flow.shape[:2]} differs from the frame size {image.shape[:2]}")
    small_image = resize_image(np.ascontiguousarray(image), size)
    small_flow = resize_flow(np.ascontiguousarray(flow, dtype=np.float32), size)
    img = torch.from_numpy(small_image).to(device).permute(2, 0, 1)[None].float() / 255.0
    return img, torch.from_numpy(small_flow).to(device).permute(2, 0, 1)[None]


@torch.no_grad()
def predict_foreground(
    model: MotionVOSModel,
    image: np.ndarray,
    flow: np.ndarray,
    size: tuple[int, int],
    flip: bool = False,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Oriented foreground probability of one frame at its own resolution.

    Args:
        image: ``H×W×3`` uint8 RGB frame.
        flow: ``H×W×2`` flow (pixels) from this frame to another one.
        size: network input ``(height, width)``.
        flip: also predict on the mirrored input and average (each prediction is oriented first).
    Returns:
        ``H×W`` float32 in [0, 1].
    """
    height, width = image.shape[:2]
    img, fl = frame_inputs(image, flow, size, device)
    inputs = [(img, fl)]
    if flip:
        mirrored = fl.flip(-1)
        mirrored = torch.cat([-mirrored[:, :1], mirrored[:, 1:]], dim=1)
        inputs.append((img.flip(-1), mirrored))
    predictions = []
    for k, (x, u) in enumerate(inputs):
        mask = model.inference_generator.mask(model.foreground_logits(x, u))
        if k == 1:
            mask = mask.flip(-1)
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
        predictions.append(orient_foreground(mask[0, 0].float().cpu().numpy()))
    return np.mean(predictions, axis=0).astype(np.float32)


def flow_magnitude_foreground(flow: np.ndarray) -> np.ndarray:
    """Baseline: Otsu threshold on the flow magnitude, oriented by the border rule → ``H×W`` {0, 1}."""
    import cv2

    magnitude = np.linalg.norm(flow.astype(np.float32), axis=2)
    top = float(magnitude.max())
    if top <= 0 or not np.isfinite(top):
        return np.zeros(magnitude.shape, dtype=np.float32)
    scaled = np.round(magnitude / top * 255).astype(np.uint8)
    _, binary = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return orient_foreground(binary.astype(np.float32))


def motion_basis(height: int, width: int, model: str, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu") -> Tensor:
    """``H·W×P`` basis of a parametric flow field over pixel coordinates scaled to [-1, 1]:
    ``1, x, y`` (affine, 3 per component) plus ``x², xy, y²`` (quadratic, 6 per component)."""
    if model not in PARAMETRIC_MOTION_MODELS:
        raise ValueError(f"model must be one of {', '.join(PARAMETRIC_MOTION_MODELS)}, got {model!r}")
    ys = torch.linspace(-1.0, 1.0, height, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, width, dtype=dtype, device=device)
    y, x = (t.reshape(-1) for t in torch.meshgrid(ys, xs, indexing="ij"))
    columns = [torch.ones_like(x), x, y]
    if model == "quadratic":
        columns += [x * x, x * y, y * y]
    return torch.stack(columns, dim=1)


def robust_motion_fit(
    flow: Tensor, model: str = "quadratic", iterations: int = 6, grid: int = 64, min_scale: float = 0.1
) -> Tensor:
    """Robust fit of a parametric (camera) motion to each flow field of a batch.

    Iteratively reweighted least squares with Cauchy weights ``1 / (1 + (r / 2.385σ)²)``, where
    ``σ`` is the median absolute residual × 1.4826 (at least ``min_scale``, in the flow's units),
    on a ``grid × grid`` subsample of the pixels; independently moving objects get small weights,
    so the fit follows the dominant (background) motion.

    Args:
        flow: ``B×2×H×W``.
    Returns:
        The fitted ``B×2×H×W`` fields, in ``flow``'s dtype (computed in float64 without gradients).
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected B×2×H×W flow, got {tuple(flow.shape)}")
    batch, _, height, width = flow.shape
    with torch.no_grad(), torch.autocast(flow.device.type, enabled=False):
        full_basis = motion_basis(height, width, model, device=flow.device)  # HW×P
        rows = torch.linspace(0, height - 1, min(grid, height), device=flow.device).round().long()
        cols = torch.linspace(0, width - 1, min(grid, width), device=flow.device).round().long()
        picked = (rows[:, None] * width + cols[None, :]).reshape(-1)
        basis = full_basis[picked]  # N×P
        target = flow.detach().double().flatten(2)[:, :, picked].transpose(1, 2)  # B×N×2
        weights = torch.ones(target.shape[:2], dtype=torch.float64, device=flow.device)
        ridge = 1e-9 * torch.eye(basis.shape[1], dtype=torch.float64, device=flow.device)
        for _ in range(iterations):
            weighted = basis * weights[..., None]  # B×N×P
            gram = weighted.transpose(1, 2) @ basis + ridge
            params = torch.linalg.solve(gram, weighted.transpose(1, 2) @ target)  # B×P×2
            residual = (target - basis @ params).norm(dim=2)  # B×N
            scale = (1.4826 * residual.quantile(0.5, dim=1, keepdim=True)).clamp(min=min_scale)
            weights = 1.0 / (1.0 + (residual / (2.385 * scale)) ** 2)
        fitted = (full_basis @ params).transpose(1, 2).reshape(batch, 2, height, width)
    return fitted.to(flow.dtype)


def fit_background_motion(
    flow: np.ndarray, model: str = "quadratic", iterations: int = 6, grid: int = 64, min_scale: float = 0.1
) -> np.ndarray:
    """:func:`robust_motion_fit` of one ``H×W×2`` flow field (pixels) → the fitted ``H×W×2`` field."""
    field = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float64)).permute(2, 0, 1)[None]
    fitted = robust_motion_fit(field, model, iterations, grid, min_scale)
    return fitted[0].permute(1, 2, 0).numpy().astype(np.float32)


def otsu_foreground(values: Tensor) -> Tensor:
    """Each sample's ``B×1×H×W`` non-negative values above its Otsu threshold → {0, 1} floats.

    The values are scaled to 0..255 by the sample's maximum and rounded, as
    :func:`flow_magnitude_foreground` does before ``cv2.threshold(..., THRESH_OTSU)``, and the
    threshold is OpenCV's: the first level ``t`` maximising the between-class variance of
    ``{≤ t}`` and ``{> t}``. A sample whose maximum is 0 gets no foreground. No host read-back.
    """
    batch = values.shape[0]
    flat = values.detach().flatten(1).double()
    top = flat.amax(dim=1, keepdim=True)
    levels = torch.round(flat / top.clamp(min=torch.finfo(torch.float64).tiny) * 255.0).long()
    histogram = torch.zeros(batch, 256, dtype=torch.float64, device=values.device)
    histogram.scatter_add_(1, levels, torch.ones_like(flat))
    p = histogram / flat.shape[1]
    level = torch.arange(256, dtype=torch.float64, device=values.device)
    below = p.cumsum(1)  # q₁(t): the share of levels ≤ t
    below_sum = (p * level).cumsum(1)
    above = 1.0 - below
    eps = float(np.finfo(np.float32).eps)  # OpenCV skips thresholds that leave a class (almost) empty
    mean_below = below_sum / below.clamp(min=eps)
    mean_above = (below_sum[:, -1:] - below_sum) / above.clamp(min=eps)
    variance = below * above * (mean_below - mean_above).square()
    variance = torch.where((below < eps) | (above < eps), torch.full_like(variance, -1.0), variance)
    threshold = variance.argmax(dim=1, keepdim=True)
    foreground = (levels > threshold) & (top > 0)
    return foreground.to(values.dtype).view_as(values)


def orient_foreground_batch(mask: Tensor, threshold: float = BORDER_FRACTION) -> Tensor:
    """:func:`orient_foreground` of each ``B×1×H×W`` sample, without host read-back."""
    height, width = mask.shape[-2:]
    band = border_width(height, width)
    ring = torch.ones(height, width, device=mask.device)
    ring[band : height - band, band : width - band] = 0.0
    coverage = ((mask[:, 0] > 0.5).float() * ring).sum(dim=(1, 2)) / ring.sum()  # no boolean indexing: no sync
    return torch.where((coverage >= threshold).view(-1, 1, 1, 1), 1.0 - mask, mask)


def camera_compensated_target(flow: Tensor, min_scale: float = 0.1) -> Tensor:
    """:func:`camera_compensated_foreground` of each ``B×2×H×W`` flow field, on its device: Otsu
    on ``|flow − robust quadratic fit|``, border-oriented → ``B×1×H×W`` {0, 1}. ``min_scale`` is
    the fit's smallest residual scale in the flow's units (0.1 for pixels)."""
    with torch.no_grad():
        residual = flow.float() - robust_motion_fit(flow.float(), "quadratic", min_scale=min_scale)
        return orient_foreground_batch(otsu_foreground(residual.norm(dim=1, keepdim=True)))


def camera_compensated_foreground(flow: np.ndarray, model: str = "quadratic") -> np.ndarray:
    """Baseline: Otsu threshold on ``|flow − fitted camera motion|``, oriented by the border rule
    → ``H×W`` {0, 1}. Unlike :func:`flow_magnitude_foreground` it is not fooled by a moving camera."""
    residual = flow.astype(np.float32) - fit_background_motion(flow, model)
    return flow_magnitude_foreground(residual)
