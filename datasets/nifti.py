"""Reading NIfTI volumes into the suite's canonical layout.

Every volume is reoriented to the closest canonical orientation (RAS+: voxel axes i, j, k
pointing right, anterior, superior) and transposed to the array layout ``(D, H, W)`` =
(k, j, i) = (inferior->superior, posterior->anterior, left->right), with spacing
``(sD, sH, sW)`` in mm. Broken files raise one clear :class:`UserError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.errors import UserError


def read_nifti(path: str | Path, layout: str = "dhw") -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read ``path`` -> (array, spacing). ``layout="dhw"``: (D, H, W) as above; ``"xyz"``: RAS
    voxel order as stored after reorientation (i, j, k)."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; check --data-root and the dataset's file list")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # nibabel / gzip / numpy raise many types for truncated or corrupt files
        detail = " ".join(str(e).split())[:120]  # one line
        raise UserError(f"{path} is not a readable NIfTI file ({type(e).__name__}: {detail}); re-export or re-download it")
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserError(f"{path} has {data.ndim} dimensions; expected a 3D volume")
    if len(zooms) < 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise UserError(f"{path} has an invalid voxel spacing {zooms}; fix its header (pixdim)")
    _AFFINES[str(path)] = affine
    if layout == "xyz":
        return data, zooms  # type: ignore[return-value]
    return np.ascontiguousarray(data.transpose(2, 1, 0)), (zooms[2], zooms[1], zooms[0])


#: affine (after reorientation) of the files read last, for image/label consistency checks
_AFFINES: dict[str, np.ndarray] = {}


def same_grid(image_path, label_path, tol_mm: float = 1e-2) -> bool:
    """Whether two files read by :func:`read_nifti` share one voxel grid (affines within tol)."""
    a, b = _AFFINES.get(str(image_path)), _AFFINES.get(str(label_path))
    return a is None or b is None or bool(np.allclose(a, b, atol=tol_mm))


def as_label(data: np.ndarray, path: str | Path) -> np.ndarray:
    """Integer label map; non-integer values are an error naming the file."""
    if np.issubdtype(data.dtype, np.integer):
        return data
    if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
        raise UserError(f"{path} holds non-integer values; a label map must hold class ids")
    return data.astype(np.int64)
