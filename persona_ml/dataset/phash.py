"""Perceptual hashes (DCT pHash) for near-duplicate photos, mirrored copies included.

The image is reduced to 32x32 grey, transformed with a 2-D DCT-II, and the 8x8 lowest
frequencies are compared with their median (the DC term left out of the median): 64 bits that
survive resizing, recompression and small colour changes. A horizontally mirrored copy flips
the sign of every odd horizontal frequency, so its hash comes from the same coefficients.
"""

from __future__ import annotations

import functools

import numpy as np

HASH_SIZE = 8
SAMPLE_SIZE = 32


@functools.lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0, :] = np.sqrt(1.0 / n)
    return m


def dct_coefficients(pixels: np.ndarray) -> np.ndarray:
    """The ``8x8`` low-frequency DCT block of the image reduced to 32x32 grey (float64)."""
    from PIL import Image

    arr = np.ascontiguousarray(pixels)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    # Pillow's L conversion is the same BT.601 luma as faces.quality.to_gray, without a float
    # copy of a 50 MP photo
    img = Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr)
    small = img.convert("L").resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.BOX)
    a = np.asarray(small, dtype=np.float64)
    d = _dct_matrix(SAMPLE_SIZE)
    return (d @ a @ d.T)[:HASH_SIZE, :HASH_SIZE]


def _bits(coeffs: np.ndarray) -> int:
    flat = coeffs.flatten()
    median = np.median(flat[1:])
    value = 0
    for bit in flat > median:
        value = (value << 1) | int(bit)
    return value


def phash(pixels: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an RGB or grey image.

    Example:
        >>> y, x = np.mgrid[0:256, 0:256]
        >>> img = (127 + 60 * np.sin(x / 23.0) + 60 * np.cos(y / 37.0 + x / 51.0)).astype(np.uint8)
        >>> hamming(phash(img), phash(img[::2, ::2])) <= 8  # the default near-duplicate cut
        True
    """
    return _bits(dct_coefficients(pixels))


def phash_pair(pixels: np.ndarray) -> tuple[int, int]:
    """``(hash, hash of the horizontally mirrored image)`` from one DCT."""
    c = dct_coefficients(pixels)
    mirrored = c.copy()
    mirrored[:, 1::2] *= -1.0  # odd horizontal frequencies change sign under x -> -x
    return _bits(c), _bits(mirrored)


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return int(bin(int(a) ^ int(b)).count("1"))
