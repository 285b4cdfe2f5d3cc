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

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    dtype = torch.bfloat16 if (device.type == "cuda" and torch.cuda.is_bf16_supported()) else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp and device.type == "cuda"):
        logits = sliding_window_inference(
            x, roi_size=tuple(patch), sw_batch_size=sw_batch_size, predictor=predict, overlap=overlap, mode=mode
        )
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
