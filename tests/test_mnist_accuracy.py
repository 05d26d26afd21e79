"""Accuracy of the shipped MNIST model (examples/mnist/model.onnx) on digits it never saw.

The held-out digits (examples/mnist/samples/heldout.npz, written by train.py) are rendered in the
forms users actually upload (inverted, scaled, rotated, noisy, JPEG, RGBA, palette, other formats,
off-centre), each through a real encode/decode round trip, and fed to the model exactly as the
server does: image_to_tensor(Image.open(upload)). Needs only numpy, pillow and onnxruntime.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

MNIST_DIR = Path(__file__).resolve().parents[1] / "examples" / "mnist"
sys.path.insert(0, str(MNIST_DIR))
import preprocess  # noqa: E402

MIN_ACCURACY = 0.98
MAX_DROP = 0.03
SUBSET = 1000  # held-out digits per upload form (all of them; a seeded permutation picks them)

Render = Callable[[np.ndarray, np.random.Generator], Image.Image]


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(MNIST_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(MNIST_DIR / "samples" / "heldout.npz")
    images, labels = data["images"], data["labels"]
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28) and len(images) >= 1000
    return images, labels


def accuracy(session: ort.InferenceSession, images: list[Image.Image], labels: np.ndarray) -> float:
    batch = np.concatenate([preprocess.image_to_tensor(image) for image in images]).astype(np.float32)
    logits = session.run(["logits"], {"image": batch})[0]
    return float((logits.argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def plain_accuracy(session: ort.InferenceSession, heldout: tuple[np.ndarray, np.ndarray]) -> float:
    images, labels = heldout
    return accuracy(session, [Image.fromarray(d, mode="L") for d in images], labels)


def round_trip(image: Image.Image, fmt: str, **params: object) -> Image.Image:
    """Encode to bytes and decode again, as an upload would be."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    buf.seek(0)
    decoded = Image.open(buf)
    decoded.load()
    return decoded


def _paper(digit: np.ndarray) -> Image.Image:
    return Image.fromarray(255 - digit, mode="L")


def _inverted(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return round_trip(_paper(digit), "PNG")


def _scaled_up(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return round_trip(_paper(digit).resize((200, 200), Image.Resampling.BICUBIC), "PNG")


def _rotated(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    big = Image.fromarray(digit, mode="L").resize((112, 112), Image.Resampling.BICUBIC)
    angle = float(rng.uniform(3.0, 8.0) * rng.choice([-1, 1]))
    return round_trip(big.rotate(angle, Image.Resampling.BILINEAR, fillcolor=0), "PNG")


def _noisy(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    noisy = 255.0 - digit + rng.normal(0.0, 12.0, size=digit.shape)
    return round_trip(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="L"), "PNG")


def _jpeg(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return round_trip(Image.fromarray(digit, mode="L"), "JPEG", quality=70)


def _rgba(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A canvas drawing: black pen on a transparent background, the ink lives in alpha."""
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., 3] = digit
    return round_trip(Image.fromarray(rgba, mode="RGBA"), "PNG")


def _palette(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    rgb = _paper(digit).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return round_trip(rgb, "PNG")


def _rgb_blue_pen(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    ink = digit.astype(np.float32)[..., None] / 255.0
    pen = np.array([20.0, 40.0, 160.0])
    rgb = 255.0 * (1.0 - ink) + pen * ink
    return round_trip(Image.fromarray(rgb.astype(np.uint8), mode="RGB"), "PNG")


def _bmp(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return round_trip(_paper(digit).convert("RGB"), "BMP")


def _gif(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return round_trip(Image.fromarray(digit, mode="L"), "GIF")


def _webp(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return round_trip(_paper(digit).convert("RGB").resize((84, 84), Image.Resampling.BICUBIC), "WEBP", quality=75)


def _tiff(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return round_trip(Image.fromarray(digit, mode="L"), "TIFF")


def _off_centre(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    canvas = Image.new("L", (120, 90), 255)
    x, y = (int(v) for v in rng.integers(0, [120 - 28, 90 - 28]))
    canvas.paste(_paper(digit), (x, y))
    return round_trip(canvas, "PNG")


FORMS: dict[str, Render] = {
    "inverted": _inverted,
    "scaled_200": _scaled_up,
    "rotated": _rotated,
    "noisy": _noisy,
    "jpeg_q70": _jpeg,
    "rgba_alpha_ink": _rgba,
    "palette_png": _palette,
    "rgb_png": _rgb_blue_pen,
    "bmp": _bmp,
    "gif": _gif,
    "webp": _webp,
    "tiff": _tiff,
    "off_centre": _off_centre,
}


def test_heldout_accuracy(plain_accuracy: float) -> None:
    print(f"plain held-out accuracy {plain_accuracy:.4f}")
    assert plain_accuracy >= MIN_ACCURACY


@pytest.mark.parametrize("form", list(FORMS))
def test_upload_form_accuracy(
    form: str,
    session: ort.InferenceSession,
    heldout: tuple[np.ndarray, np.ndarray],
    plain_accuracy: float,
) -> None:
    images, labels = heldout
    rng = np.random.default_rng([0, list(FORMS).index(form)])
    pick = np.sort(np.random.default_rng(0).permutation(len(labels))[:SUBSET])
    uploads = [FORMS[form](images[i], rng) for i in pick]
    acc = accuracy(session, uploads, labels[pick])
    print(f"{form}: accuracy {acc:.4f} (plain {plain_accuracy:.4f})")
    assert acc >= plain_accuracy - MAX_DROP, f"{form}: {acc:.4f} vs plain {plain_accuracy:.4f}"


def test_blank_image_raises() -> None:
    for blank in (Image.new("L", (28, 28), 0), Image.new("RGB", (300, 200), "white"), Image.new("RGBA", (64, 64))):
        with pytest.raises(preprocess.NoDigitError):
            preprocess.image_to_tensor(blank)
