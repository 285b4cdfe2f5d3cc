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
) -> np.ndarray:
    """Label map (D, H, W) uint8 = argmax of sliding-window logits of a normalised image (D, H, W).

    Volumes smaller than the patch are padded by MONAI and cropped back.
    """
    from monai.inferers import sliding_window_inference

    from bench.step import amp_dtype, amp_enabled

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=amp_enabled(device, amp)):
        logits = sliding_window_inference(
            x, roi_size=tuple(patch), sw_batch_size=sw_batch_size, predictor=predict, overlap=overlap, mode=mode
        )
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
