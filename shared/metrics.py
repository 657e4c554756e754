"""Reconstruction quality metrics on images in [0, 1]: MSE, PSNR and SSIM.

SSIM comes from pytorch-msssim (Gaussian window of 11 pixels, sigma 1.5, data range 1), the
setting used by the CEM and ResSFL evaluations. Images smaller than 11 pixels get the largest
odd window that fits.
"""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ssim as _ssim

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def per_image_mse(reconstructions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean squared error of each image, [B], for inputs [B, C, H, W]."""
    return (reconstructions - targets).pow(2).flatten(1).mean(1)


def psnr_from_mse(mse: torch.Tensor, floor: float = 1e-10) -> torch.Tensor:
    """Return PSNR in dB for images in [0, 1]: 10 log10(1 / MSE)."""
    return 10.0 * torch.log10(1.0 / mse.clamp_min(floor))


def per_image_ssim(reconstructions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the SSIM of each image, [B], for inputs [B, C, H, W] in [0, 1]."""
    side = min(targets.shape[-2:])
    window = min(SSIM_WINDOW, side if side % 2 == 1 else side - 1)
    return _ssim(
        reconstructions.float(), targets.float(), data_range=1.0, size_average=False, win_size=window, win_sigma=SSIM_SIGMA
    )


def score_reconstructions(reconstructions: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Score reconstructions against the true images.

    Returns mse, psnr and ssim as means of per-image values, and psnr_batch: the mean over
    consecutive batches of batch_size images of 10 log10(1 / batch MSE), the PSNR the CEM
    reference code reports.
    """
    if reconstructions.shape != targets.shape:
        raise ValueError(f"reconstructions {list(reconstructions.shape)} and targets {list(targets.shape)} differ in shape")
    if len(targets) == 0:
        raise ValueError("no images to score")

    mse = per_image_mse(reconstructions, targets)
    ssim = per_image_ssim(reconstructions, targets)
    batch_psnr = [
        10.0 * math.log10(1.0 / max(float(mse[start:start + batch_size].mean()), 1e-10))
        for start in range(0, len(mse), batch_size)
    ]
    return {
        "mse": float(mse.mean()),
        "psnr": float(psnr_from_mse(mse).mean()),
        "ssim": float(ssim.mean()),
        "psnr_batch": float(sum(batch_psnr) / len(batch_psnr)),
    }
