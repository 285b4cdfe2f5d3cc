"""Sliding-window inference (MONAI) for whole volumes."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


@torch.no_grad()
def predict_volume(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    patch: Sequence[int],
    overlap: float,
    device: torch.device,
    mode: str = "gaussian",
    sw_batch_size: int = 2,
    amp: bool = False,
    fusion: str = "logits",
    probabilities: bool = False,
) -> np.ndarray:
    """Label map (D, H, W) uint8 = argmax of the fused sliding windows of a normalised image (D, H, W).

    ``overlap``: one number or one per axis (D, H, W); ``fusion``: "logits" averages the
    windows' logits, "softmax" their softmax probabilities (the released DHC / TAK tests).
    Volumes smaller than the patch are padded by MONAI and cropped back. ``probabilities``:
    return the class probabilities (C, D, H, W) float32 instead (softmax of the fused logits,
    or the fused softmax), for ensembles and test-time augmentation.
    """
    if fusion not in ("logits", "softmax"):
        raise ValueError(f"fusion must be 'logits' or 'softmax', not {fusion!r}")
    if fusion == "softmax":
        raw = predict

        def predict(x: torch.Tensor) -> torch.Tensor:  # noqa: F811 - the softmax of the method's logits
            return torch.softmax(raw(x).float(), 1)

    from monai.inferers import sliding_window_inference

    from bench.step import amp_dtype, amp_enabled

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=amp_enabled(device, amp)):
        logits = sliding_window_inference(
            x, roi_size=tuple(patch), sw_batch_size=sw_batch_size, predictor=predict, overlap=overlap, mode=mode
        )
    if probabilities:
        fused = logits.float() if fusion == "softmax" else torch.softmax(logits.float(), 1)
        return fused[0].cpu().numpy()
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
