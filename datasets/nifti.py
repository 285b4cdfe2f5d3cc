"""Reading NIfTI volumes into the suite's canonical layout.

Every volume is reoriented to the closest canonical orientation (RAS+: voxel axes i, j, k
pointing right, anterior, superior) and transposed to the array layout ``(D, H, W)`` =
(k, j, i) = (inferior->superior, posterior->anterior, left->right), with spacing
``(sD, sH, sW)`` in mm. Broken files raise one clear :class:`UserError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.core.errors import UserError
from bench.core.store import absent


def read_nifti(path: str | Path, layout: str = "dhw") -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read ``path`` -> (array, spacing). ``layout="dhw"``: (D, H, W) as above; ``"xyz"``: RAS
    voxel order as stored after reorientation (i, j, k)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} {absent(path)}; check --data-root and the dataset's file list")
    try:
        source = nib.load(str(path))  # the header only: the data is read below, once checked
    except Exception as e:
        raise UserError(f"{path} is not a readable NIfTI file ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                        f"re-export or re-download it")
    _check_promise(path, source)
    try:
        _SOURCE_AFFINES[str(path)] = np.asarray(source.affine, dtype=np.float64)
        img = nib.as_closest_canonical(source)
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


def _check_promise(path: Path, img) -> None:
    """Refuse, from the header alone, a volume that could not be held in memory (a small
    .nii.gz may expand to many GB) or whose affine is not finite."""
    import math

    from bench.core.store import available_memory

    shape = tuple(int(s) for s in img.shape)
    itemsize = max(int(np.dtype(img.get_data_dtype()).itemsize), 4)  # scaled or converted data is float32 or wider
    need = 2 * math.prod(shape) * itemsize  # the array and its reoriented copy
    have = available_memory()
    if have is not None and need > have:
        raise UserError(f"{path} promises a {'x'.join(map(str, shape))} volume ({need / 2**30:.1f} GB to read), more than the "
                        f"{have / 2**30:.1f} GB of memory available; check the file (a corrupt or hostile header) or crop it")
    if not np.isfinite(np.asarray(img.affine, dtype=np.float64)).all():
        raise UserError(f"{path} has a NaN or infinite affine; fix its header (qform / sform)")


#: affine (after reorientation) of the files read last, for image/label consistency checks
_AFFINES: dict[str, np.ndarray] = {}
#: affine of the files read last as stored (before reorientation): where predictions go back to
_SOURCE_AFFINES: dict[str, np.ndarray] = {}


def source_affine(path) -> np.ndarray | None:
    """The stored affine of a file read by :func:`read_nifti` (None if it was not read)."""
    return _SOURCE_AFFINES.get(str(path))


def write_nifti(path: str | Path, labels: np.ndarray, spacing, affine=None) -> None:
    """Write a (D, H, W) label map (the layout :func:`read_nifti` returns) as uint8 NIfTI.

    With ``affine`` (the source image's stored 4x4 affine) the file has the source's voxel
    order and world position, so reading it back with :func:`read_nifti` gives ``labels``;
    without, a RAS grid with ``spacing`` (sD, sH, sW) at the origin. Written atomically.
    """
    import nibabel as nib
    from nibabel import orientations as nio

    from bench.core.store import atomic_write_bytes

    ras = np.ascontiguousarray(np.asarray(labels, dtype=np.uint8).transpose(2, 1, 0))  # (i, j, k) = RAS
    if affine is None:
        img = nib.Nifti1Image(ras, np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0]))
    else:
        affine = np.asarray(affine, dtype=np.float64)
        to_source = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.io_orientation(affine))
        img = nib.Nifti1Image(np.ascontiguousarray(nio.apply_orientation(ras, to_source)), affine)
    img.set_data_dtype(np.uint8)
    atomic_write_bytes(Path(path), img.to_bytes() if str(path).endswith(".nii") else _gz(img))


def _gz(img) -> bytes:
    import gzip

    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


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
