"""ResNet-50 image classification (random weights): a compute-bound workload served in batches.

`POST /` with a file field `images` (JPEG, PNG, BMP, GIF, WebP, TIFF) →
`{"predictions": [{"label": "class_417", "score": 0.0123}, ... 5 of them]}`, the top five of
1000 classes. The weights are random (build_model.py): the labels mean nothing.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from maserve import Inputs, InvalidInput, Model, UploadedFile
from maserve.onnx import onnx_session

RESIZE = 256  # shorter side, then a centre crop of CROP x CROP (torchvision's ImageNet eval transform)
CROP = 224
TOP_K = 5
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
LABELS = [f"class_{i}" for i in range(1000)]
MAX_IMAGE_PIXELS = int(os.environ.get("MASERVE_MAX_IMAGE_PIXELS", "40000000"))
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


class ResnetService(Model):
    """ResNet-50 on onnxruntime, one intra-op thread per worker (maserve runs a worker per core)."""

    def load(self) -> None:
        path = self.model_dir / "model.onnx"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not found; build it first: python examples/resnet/build_model.py"
            )
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def warmup(self) -> None:
        """One JPEG decoded and classified: the first caller pays no lazy initialisation."""
        buffer = io.BytesIO()
        Image.new("RGB", (320, 240), (120, 90, 60)).save(buffer, format="JPEG")
        self.predict(
            Inputs(
                files={
                    "images": UploadedFile(
                        "warmup.jpg", "image/jpeg", buffer.getvalue()
                    )
                }
            )
        )

    def predict(self, inputs: Inputs) -> dict:
        (answer,) = self.predict_batch([self.prepare(inputs)])
        return answer

    def prepare(self, inputs: Inputs) -> np.ndarray:
        """Decode, resize, crop and normalise one upload: its errors fail only its request."""
        upload = inputs.files["images"]
        return preprocess(open_image(upload.data, upload.filename))

    def predict_batch(self, items: list[np.ndarray]) -> list[dict]:
        """One onnxruntime call for the whole batch (the batch dimension is dynamic)."""
        (logits,) = self.session.run(None, {self.input_name: np.stack(items)})
        return [top_k(row) for row in softmax(logits)]


def open_image(data: bytes, filename: str) -> Image.Image:
    """An upload as a decoded RGB image; format and declared size checked before any pixel is
    decoded. A JPEG is decoded at the smallest DCT scale that keeps its shorter side >= RESIZE."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidInput(
            f"'{filename}' is not an image in a supported format (JPEG, PNG, BMP, GIF, WebP, TIFF)",
            error_code="MASERVE.INVALID_IMAGE",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(
            f"'{filename}' declares too many pixels",
            error_code="MASERVE.IMAGE_TOO_LARGE",
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(
            f"'{filename}' could not be read: {exc}", error_code="MASERVE.INVALID_IMAGE"
        ) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidInput(
            f"'{filename}' declares {width}x{height} pixels, more than the limit of {MAX_IMAGE_PIXELS}",
            error_code="MASERVE.IMAGE_TOO_LARGE",
        )
    try:
        if image.format == "JPEG":
            image.draft("RGB", (RESIZE, RESIZE))  # both sides stay >= RESIZE
        image.load()
        return _rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidInput(
            f"'{filename}' is truncated or corrupt: {exc}",
            error_code="MASERVE.INVALID_IMAGE",
        ) from None


def _rgb(image: Image.Image) -> Image.Image:
    """RGB; a transparent background becomes white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image) -> np.ndarray:
    """Shorter side to RESIZE (bilinear), centre crop CROP x CROP, ImageNet mean/std: CHW float32."""
    width, height = image.size
    scale = RESIZE / min(width, height)
    size = (max(RESIZE, round(width * scale)), max(RESIZE, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - CROP) // 2, (size[1] - CROP) // 2
    image = image.crop((left, top, left + CROP, top + CROP))
    pixels = (np.asarray(image, dtype=np.float32) - MEAN) / STD  # HWC
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k(probabilities: np.ndarray) -> dict:
    best = np.argpartition(probabilities, -TOP_K)[-TOP_K:]
    best = best[np.argsort(probabilities[best])[::-1]]
    return {
        "predictions": [
            {"label": LABELS[i], "score": round(float(probabilities[i]), 6)}
            for i in best
        ]
    }
