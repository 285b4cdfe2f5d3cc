"""MagicNet's magic-cube machinery (Chen et al., CVPR 2023), shared by MagicNet, GA and TAK.

A patch (D, H, W) is cut into a grid of ``cube`` ^3 cubes (n_d x n_h x n_w; 3x3x3 for 96^3 and
cube 32). Tensors follow the layout (B, C, D, H, W).

* cross-image partition and recovery: every cube position takes its cube from an image
  chosen by a random permutation of the batch (:func:`cross_image_indices`); the recovery
  index puts every cube back in its image, at any feature scale;
* within-image partition: the list of an image's cubes (:func:`cubes_of`) and the inverse
  (:func:`unmix_cubes`), with the cube-location label ``x + n_x y + n_x n_y z`` of each cube
  (:func:`location_labels`) that the location head predicts;
* :class:`OrganClassLogger`: running class distribution of pseudo-labels used to blend the
  teacher's whole and cube-wise predictions.
"""

from __future__ import annotations

import torch


def grid(shape: tuple[int, int, int], cube: int) -> tuple[int, int, int]:
    """Cubes per axis of a patch ``shape`` (D, H, W) cut into cubes of edge ``cube``.

    Raises:
        ValueError: an axis is not a multiple of ``cube``.
    """
    if any(s % cube for s in shape):
        raise ValueError(f"patch {tuple(shape)} is not divisible into cubes of {cube}")
    return tuple(s // cube for s in shape)  # type: ignore[return-value]


def cross_image_indices(batch: int, n: tuple[int, int, int], generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B, n_d, n_h, n_w): per cube position, a permutation of the batch (image to take the cube from)."""
    return torch.argsort(torch.rand(batch, *n, generator=generator), dim=0).to(device)


def _expand(ind: torch.Tensor, channels: int, cube_shape: tuple[int, int, int]) -> torch.Tensor:
    b, nd, nh, nw = ind.shape
    out = ind[:, None].repeat_interleave(cube_shape[0], 2).repeat_interleave(cube_shape[1], 3).repeat_interleave(cube_shape[2], 4)
    return out.expand(b, channels, nd * cube_shape[0], nh * cube_shape[1], nw * cube_shape[2])


def mix(x: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """Cross-image partition: x (B, C, D, H, W) -> mixed batch of the same shape."""
    b, c, d, h, w = x.shape
    n = ind.shape[1:]
    idx = _expand(ind, c, (d // n[0], h // n[1], w // n[2]))
    return torch.gather(x, 0, idx)


def unmix(x: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """Recovery of a mixed tensor at any scale (the spatial size must be a multiple of the grid)."""
    b, c, d, h, w = x.shape
    n = ind.shape[1:]
    rec = torch.argsort(ind, dim=0)
    idx = _expand(rec, c, (d // n[0], h // n[1], w // n[2]))
    return torch.gather(x, 0, idx)


def cubes_of(x: torch.Tensor, cube: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, N, C, cube, cube, cube), cubes ordered D-outer, W-inner."""
    b, c, d, h, w = x.shape
    nd, nh, nw = grid((d, h, w), cube)
    t = x.reshape(b, c, nd, cube, nh, cube, nw, cube)
    return t.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, nd * nh * nw, c, cube, cube, cube)


def released_order(n: tuple[int, int, int]) -> torch.Tensor:
    """The cube list index the released ``unmix_tensor`` puts at each grid position.

    The released ``get_patch_list`` lists cubes with the last axis innermost (as
    :func:`cubes_of`), but ``unmix_tensor`` reads position (i, j, k) from index
    ``i + n_0 j + n_0 n_1 k``: the recovery transposes the cube grid (first <-> last axis), and
    only cubes with i == k land in place (9 of 27 on a 3x3x3 grid).
    """
    nd, nh, nw = n
    i, j, k = torch.meshgrid(torch.arange(nd), torch.arange(nh), torch.arange(nw), indexing="ij")
    return (i + nd * j + nd * nh * k).reshape(-1)


def unmix_cubes(cubes: torch.Tensor, n: tuple[int, int, int], released_order_: bool = False) -> torch.Tensor:
    """Inverse of :func:`cubes_of` at any scale: (B, N, C, s, s, s) -> (B, C, n_d s, n_h s, n_w s).

    ``released_order_``: recover as the released MagicNet / GALoss / TAK code does (transposed
    grid, see :func:`released_order`) instead of inverting :func:`cubes_of`.
    """
    if released_order_:
        cubes = cubes[:, released_order(n).to(cubes.device)]
    b, _, c, sd, sh, sw = cubes.shape
    nd, nh, nw = n
    t = cubes.reshape(b, nd, nh, nw, c, sd, sh, sw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return t.reshape(b, c, nd * sd, nh * sh, nw * sw)


def location_labels(n: tuple[int, int, int], device=None) -> torch.Tensor:
    """(N,) location label of each cube in :func:`cubes_of` order.

    With the first array axis as MagicNet's x: cube (i, j, k) has label ``i + n_0 j + n_0 n_1 k``.
    """
    nd, nh, nw = n
    i, j, k = torch.meshgrid(torch.arange(nd), torch.arange(nh), torch.arange(nw), indexing="ij")
    return (i + nd * j + nd * nh * k).reshape(-1).to(device)


class OrganClassLogger:
    """Running count of pseudo-label classes (MagicNet's organ-class distribution)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes)
        self._pending = torch.zeros(num_classes)
        self._has_pending = False

    def append(self, labels: torch.Tensor) -> None:
        self._pending += torch.bincount(labels.reshape(-1).cpu(), minlength=self.num_classes)[: self.num_classes].float()
        self._has_pending = True

    def update(self) -> None:
        """Replace the distribution by the counts gathered since the last update."""
        if self._has_pending:
            self.counts = self._pending.clone()
            self._pending.zero_()
            self._has_pending = False

    def weights(self, temperature: float = 1.0) -> torch.Tensor:
        """dist^(1/T), normalised to sum 1, then divided by its max: (C,) in [0, 1]."""
        d = self.counts.clamp_min(0) ** (1.0 / temperature)
        d = d / d.sum().clamp_min(1e-12)
        return d / d.max().clamp_min(1e-12)

    def state_dict(self) -> dict:
        return {"counts": self.counts.clone(), "pending": self._pending.clone(), "has_pending": self._has_pending}

    def load_state_dict(self, s: dict) -> None:
        self.counts, self._pending, self._has_pending = s["counts"].clone(), s["pending"].clone(), bool(s["has_pending"])
