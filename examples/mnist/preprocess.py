"""Turn what users upload (photos, scans, canvas drawings) into an MNIST-style 28x28 tensor.

MNIST digits are light ink on black, cropped to the ink, fitted into 20x20 keeping the aspect
ratio and centred by mass in 28x28. Training (train.py) and serving both go through
`normalize_ink`, so the model sees exactly what the server feeds it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 28
BOX = 20
# Larger uploads are shrunk first: a digit needs no more than this to be read, and it bounds the cost.
WORK_SIDE = 160
# Fraction of the brightest ink a pixel needs to count when cropping (ignores paper grain and noise).
INK_THRESHOLD = 0.3
# An image whose ink range is below this (out of 255) holds no digit.
MIN_CONTRAST = 24.0
_POSITIONS = np.arange(BOX, dtype=np.float32)


NO_DIGIT = "the image holds no visible digit (it is blank or has almost no contrast)"


class NoDigitError(ValueError):
    """The image is blank: there is no ink to read."""


def ink_from_image(image: Image.Image) -> np.ndarray:
    """Return a float32 ink map (ink high, background 0) from any PIL image mode."""
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32)
        if alpha.min() < 250.0:
            # A drawing on a transparent canvas: the alpha channel is where the ink is.
            return _shrink(alpha)
    if image.mode not in ("L", "I;16", "I", "F"):
        image = image.convert("L")
    elif image.mode != "L":
        image = _to_8bit(image)
    if max(image.size) > WORK_SIDE:
        image = image.copy()
        image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    return _polarize(_pixels(image))


def gray_inks(images: list[Image.Image]) -> list[np.ndarray | None]:
    """`ink_from_image` of the plain grayscale images (mode 'L', within WORK_SIDE), computed together
    for each size: the same values in a few numpy calls instead of several per image. None for the
    other images, which need `ink_from_image` one by one."""
    inks: list[np.ndarray | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image.mode == "L" and max(image.size) <= WORK_SIDE:
            by_size.setdefault(image.size, []).append(i)
    for (width, height), indexes in by_size.items():
        pixels = b"".join(images[i].tobytes() for i in indexes)
        gray = np.frombuffer(pixels, dtype=np.uint8).reshape(len(indexes), height, width)
        for i, ink in zip(indexes, _polarize_many(gray)):
            inks[i] = ink
    return inks


def _pixels(image: Image.Image) -> np.ndarray:
    """An 'L' image's pixels as uint8 (tobytes is several times cheaper than np.asarray(image))."""
    width, height = image.size
    return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(height, width)


def _to_8bit(image: Image.Image) -> Image.Image:
    arr = np.asarray(image, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _shrink(arr: np.ndarray) -> np.ndarray:
    if max(arr.shape) <= WORK_SIDE:
        return arr
    image = Image.fromarray(arr.astype(np.uint8), mode="L")
    image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


def _polarize(gray: np.ndarray) -> np.ndarray:
    """Make ink bright on a zero background, whichever way round the upload was."""
    # The border is mostly background; its mean tells the paper's colour (a median costs 10x more).
    height, width = gray.shape
    inner = gray[1:-1, 1:-1]
    border_sum = float(gray.sum(dtype=np.float64)) - float(inner.sum(dtype=np.float64))
    background = border_sum / (height * width - inner.size)
    if background > 127.0:
        ink = np.subtract(background, gray, dtype=np.float32)  # dark ink on light paper
    else:
        ink = np.subtract(gray, background, dtype=np.float32)  # light ink on a dark ground
    return np.maximum(ink, 0.0, out=ink)


def _polarize_many(gray: np.ndarray) -> np.ndarray:
    """`_polarize` of n same-size uploads (gray: n x h x w) at once, with the same values: the
    integer border sums are exact in float64 in any order, the rest is element by element."""
    height, width = gray.shape[1:]
    inner = gray[:, 1:-1, 1:-1]
    border_sum = gray.sum(axis=(1, 2), dtype=np.float64) - inner.sum(axis=(1, 2), dtype=np.float64)
    background = border_sum / (height * width - inner[0].size)
    paper = background[:, None, None].astype(np.float32)
    ink = np.where(
        (background > 127.0)[:, None, None],
        np.subtract(paper, gray, dtype=np.float32),  # dark ink on light paper
        np.subtract(gray, paper, dtype=np.float32),  # light ink on a dark ground
    )
    return np.maximum(ink, 0.0, out=ink)


def normalize_ink(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit into 20x20, centre by mass in 28x28; values in [0, 1]. The reference
    (training uses it); `normalize_inks` does the same for many images, with bitwise the same values."""
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise NoDigitError(NO_DIGIT)
    ink = ink * np.float32(1.0 / peak)
    mask = ink > INK_THRESHOLD
    (rows,) = np.nonzero(mask.any(axis=1))  # np.flatnonzero, without its Python wrapper
    (cols,) = np.nonzero(mask.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    crop[crop <= INK_THRESHOLD * 0.5] = 0.0  # paper grain and noise around the strokes

    fitted = np.zeros((BOX, BOX), dtype=np.float32)
    new_h, new_w = _fit(crop, fitted)
    small = np.minimum(fitted[:new_h, :new_w], 1.0)  # bilinear resizing can overshoot by a rounding error

    total = float(small.sum())
    cy = float(small.sum(axis=1) @ _POSITIONS[:new_h]) / total if total else new_h / 2
    cx = float(small.sum(axis=0) @ _POSITIONS[:new_w]) / total if total else new_w / 2
    top = int(round(SIDE / 2 - cy))
    left = int(round(SIDE / 2 - cx))
    top = min(max(top, 0), SIDE - new_h)
    left = min(max(left, 0), SIDE - new_w)

    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = small
    peak = float(small.max())
    if peak > 0:
        out *= np.float32(1.0 / peak)
    return out


def normalize_inks(inks: np.ndarray) -> tuple[np.ndarray, list[bool]]:
    """`normalize_ink` of n same-size ink maps (n x h x w) at once: (n x 28 x 28 tensors, n blank
    flags). The pixel work runs as a few numpy calls for the whole stack (per-image numpy calls on
    28x28 arrays cost more in call overhead than in arithmetic); per-image scalars are plain Python."""
    count, height, width = inks.shape
    peaks = inks.reshape(count, -1).max(axis=1).tolist()
    blank = [peak < MIN_CONTRAST for peak in peaks]
    scaled = inks * _reciprocals([1.0 if is_blank else peak for is_blank, peak in zip(blank, peaks)])
    # Which rows and columns hold ink, as float sums: a matrix product is several times cheaper
    # than a boolean any() along an axis of many small images.
    ink = np.greater(scaled, INK_THRESHOLD).astype(np.float32)
    rows = np.matmul(ink, np.ones(width, dtype=np.float32)) > 0
    cols = np.matmul(np.ones(height, dtype=np.float32), ink) > 0
    # Each image's ink box: its first and last rows and columns holding ink.
    boxes = zip(
        rows.argmax(axis=1).tolist(),
        (height - rows[:, ::-1].argmax(axis=1)).tolist(),
        cols.argmax(axis=1).tolist(),
        (width - cols[:, ::-1].argmax(axis=1)).tolist(),
    )
    # Paper grain and noise around the strokes go to zero (a product is cheaper than a masked store).
    np.multiply(scaled, scaled > INK_THRESHOLD * 0.5, out=scaled)

    fitted = np.zeros((count, BOX, BOX), dtype=np.float32)  # each image's ink at the top left ...
    sizes = [
        (1, 1) if is_blank else _fit(scaled[i, top:bottom, left:right], fitted[i])  # ... and its size there
        for i, (is_blank, (top, bottom, left, right)) in enumerate(zip(blank, boxes))
    ]
    np.minimum(fitted, 1.0, out=fitted)  # bilinear resizing can overshoot by a rounding error
    totals = fitted.sum(axis=(1, 2)).tolist()
    row_mass = (fitted.sum(axis=2) @ _POSITIONS).tolist()
    col_mass = (fitted.sum(axis=1) @ _POSITIONS).tolist()

    out = np.zeros((count, SIDE, SIDE), dtype=np.float32)
    for i, ((new_h, new_w), total, y_mass, x_mass) in enumerate(zip(sizes, totals, row_mass, col_mass)):
        centre_y = y_mass / total if total else new_h / 2
        centre_x = x_mass / total if total else new_w / 2
        top = min(max(round(SIDE / 2 - centre_y), 0), SIDE - new_h)
        left = min(max(round(SIDE / 2 - centre_x), 0), SIDE - new_w)
        out[i, top : top + new_h, left : left + new_w] = fitted[i, :new_h, :new_w]
    peaks = fitted.reshape(count, -1).max(axis=1).tolist()
    out *= _reciprocals([peak if peak > 0 else 1.0 for peak in peaks])
    return out, blank


def _fit(crop: np.ndarray, into: np.ndarray) -> tuple[int, int]:
    """Resize `crop` to fit 20x20 keeping its aspect ratio, written at the top left of `into`."""
    height, width = crop.shape
    scale = BOX / max(height, width)
    new_h = max(1, round(height * scale))
    new_w = max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        into[:height, :width] = crop  # already fits (an MNIST-style upload): resizing would be the identity
    else:
        # Through raw float32 bytes both ways: the same pixels as fromarray/asarray, at a third less cost.
        resized = Image.frombytes("F", (width, height), crop.tobytes()).resize((new_w, new_h), Image.Resampling.BILINEAR)
        into[:new_h, :new_w] = np.frombuffer(resized.tobytes(), dtype=np.float32).reshape(new_h, new_w)
    return new_h, new_w


def _reciprocals(values: list[float]) -> np.ndarray:
    """1 / value for each value, as float32 (what `np.float32(1.0 / value)` gives), shaped n x 1 x 1."""
    return np.array([1.0 / value for value in values], dtype=np.float32).reshape(-1, 1, 1)


def image_to_tensor(image: Image.Image) -> np.ndarray:
    """PIL image → float32 tensor of shape (1, 1, 28, 28), the model's input."""
    return normalize_ink(ink_from_image(image)).reshape(1, 1, SIDE, SIDE)


def images_to_tensors(images: list[Image.Image]) -> list[np.ndarray | Exception]:
    """The (28, 28) inputs of a batch of uploads, the same values as `image_to_tensor` gives each
    alone: inks of a size are normalised together. Where an image has none, the error it raises
    alone takes its place (NoDigitError when blank), so it fails by itself."""
    results: list[np.ndarray | Exception] = [NoDigitError(NO_DIGIT)] * len(images)
    by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for i, (image, ink) in enumerate(zip(images, gray_inks(images))):
        if ink is None:
            try:
                ink = ink_from_image(image)
            except (OSError, ValueError, SyntaxError) as exc:
                results[i] = exc
                continue
        by_shape.setdefault(ink.shape, []).append((i, ink))
    for group in by_shape.values():
        if len(group) == 1:  # one image: fewer numpy calls than the batch path's
            (i, ink), = group
            try:
                results[i] = normalize_ink(ink)
            except NoDigitError as exc:
                results[i] = exc
            continue
        tensors, blank = normalize_inks(np.stack([ink for _, ink in group]))
        for (i, _), tensor, is_blank in zip(group, tensors, blank):
            if not is_blank:
                results[i] = tensor
    return results
