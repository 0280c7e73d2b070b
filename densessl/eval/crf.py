"""Optional fully connected CRF (DenseCRF) refinement of a foreground probability map.

Two labels (background, foreground) with the Krähenbühl & Koltun mean-field inference
("Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011) through
``pydensecrf`` (the ``pydensecrf2`` package, installed with ``pip install 'densessl[crf]'``).
The package is imported only when a refinement is asked for, so the rest of densessl works
without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from densessl.errors import InputError

_INSTALL_HINT = "pip install 'densessl[crf]' (it installs pydensecrf2, imported as pydensecrf)"


@dataclass(frozen=True)
class CRFConfig:
    """DenseCRF parameters for a binary foreground / background mask.

    The defaults are the common DAVIS settings: those of the DAVIS-2016 CRF post-processing
    published with MP-Net (Tokmakov et al., "Learning Motion Patterns in Videos", CVPR 2017)
    and reused for unsupervised video object segmentation: 5 mean-field iterations, a
    smoothness kernel (``gaussian_sxy`` = 3 px, weight 3) and an appearance kernel
    (``bilateral_sxy`` = 50 px, ``bilateral_srgb`` = 10 intensity levels, weight 5). The
    generic pydensecrf example (bilateral 80 px / 13 levels / weight 10) smooths much more: on
    soft DAVIS masks it lowers the region score J instead of raising it.

    ``clip`` bounds the probabilities to ``[clip, 1 - clip]`` before the unary ``-log p`` so
    that a hard 0 / 1 in the input does not become an infinite energy.
    """

    iterations: int = 5
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 10.0
    bilateral_compat: float = 5.0
    clip: float = 1e-5

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise InputError(f"CRFConfig.iterations must be an integer >= 0, got {self.iterations!r}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            value = getattr(self, name)
            if not _is_real(value) or not value > 0:
                raise InputError(f"CRFConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("gaussian_compat", "bilateral_compat"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise InputError(f"CRFConfig.{name} must be a finite number >= 0, got {value!r}")
        if not _is_real(self.clip) or not 0 < self.clip < 0.5:
            raise InputError(f"CRFConfig.clip must be in (0, 0.5), got {self.clip!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _import_pydensecrf() -> tuple[ModuleType, Callable[..., np.ndarray]]:
    """``(pydensecrf.densecrf, pydensecrf.utils.unary_from_softmax)``; ImportError when absent."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    return dcrf, unary_from_softmax


def crf_available() -> bool:
    """Whether ``pydensecrf`` can be imported (``pip install 'densessl[crf]'``)."""
    try:
        _import_pydensecrf()
    except ImportError:
        return False
    return True


def _check_inputs(image: np.ndarray, foreground_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(H×W×3 uint8 C-contiguous image, H×W float64 probabilities)``."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"argument 'image': expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"argument 'image': expected dtype uint8 (RGB 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"argument 'image': expected shape H×W×3, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"argument 'image': empty image of shape {image.shape}")
    if not isinstance(foreground_prob, np.ndarray):
        raise InputError(
            f"argument 'foreground_prob': expected a numpy array, got {type(foreground_prob).__name__}"
        )
    if foreground_prob.dtype == bool or not np.issubdtype(foreground_prob.dtype, np.number) \
            or np.issubdtype(foreground_prob.dtype, np.complexfloating):
        raise InputError(
            f"argument 'foreground_prob': expected real probabilities, got dtype {foreground_prob.dtype}"
        )
    if foreground_prob.shape != image.shape[:2]:
        raise InputError(
            f"argument 'foreground_prob': shape {foreground_prob.shape} does not match the image "
            f"size {image.shape[:2]} (expected H×W for an H×W×3 image)"
        )
    prob = foreground_prob.astype(np.float64)  # a copy: the caller's array is never modified
    if not np.isfinite(prob).all():
        raise InputError("argument 'foreground_prob': contains NaN or infinite values")
    low, high = float(prob.min()), float(prob.max())
    if low < 0.0 or high > 1.0:
        raise InputError(f"argument 'foreground_prob': values must lie in [0, 1], got [{low:g}, {high:g}]")
    return np.ascontiguousarray(image), prob


def refine_foreground(
    image: np.ndarray, foreground_prob: np.ndarray, config: CRFConfig | None = None
) -> np.ndarray:
    """Refine a foreground probability map with a two-label DenseCRF.

    Args:
        image: ``H×W×3`` uint8 RGB frame (the kernels are symmetric in the channels, so BGR
            gives the same result).
        foreground_prob: ``H×W`` probability of foreground, finite, in ``[0, 1]``.
        config: CRF parameters; :class:`CRFConfig` defaults when ``None``.

    Returns:
        ``H×W`` float32 probability of foreground after mean-field inference (threshold at
        0.5 for a mask). With ``iterations=0`` it is the clipped input.

    Raises:
        InputError: bad inputs (the message names the argument), or ``pydensecrf`` is not
            installed.
    """
    config = CRFConfig() if config is None else config
    if not isinstance(config, CRFConfig):
        raise InputError(f"argument 'config': expected a CRFConfig, got {type(config).__name__}")
    image, prob = _check_inputs(image, foreground_prob)
    try:
        dcrf, unary_from_softmax = _import_pydensecrf()
    except ImportError as error:
        raise InputError(f"DenseCRF refinement needs pydensecrf: {_INSTALL_HINT} ({error})") from error

    height, width = prob.shape
    prob = np.clip(prob, config.clip, 1.0 - config.clip)
    softmax = np.stack([1.0 - prob, prob]).reshape(2, -1)  # label 0 = background, 1 = foreground
    unary = np.ascontiguousarray(unary_from_softmax(softmax, clip=None), dtype=np.float32)

    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=config.bilateral_sxy, srgb=config.bilateral_srgb, rgbim=image, compat=config.bilateral_compat
    )
    q = np.asarray(crf.inference(config.iterations), dtype=np.float32)
    return q[1].reshape(height, width)
