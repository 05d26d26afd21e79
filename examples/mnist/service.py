"""The MNIST reference application: reads a handwritten digit from any common image upload."""

from __future__ import annotations

import io
import os
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from preprocess import SIDE, NoDigitError, images_to_tensors

from maserve import Inputs, InvalidInput, Model, UploadedFile
from maserve.onnx import onnx_session

# Refuse images whose header declares more pixels than this, before decoding them (bombs).
MAX_IMAGE_PIXELS = int(os.environ.get("MASERVE_MAX_IMAGE_PIXELS", 40_000_000))
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
# Pillow's decompression-bomb warning (a header declaring too many pixels) is an error wherever this
# service runs: set once here, as warnings.catch_warnings per request costs more than a tenth of
# the image decode and is not thread-safe.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


class MnistService(Model):
    """`POST /` with a file field `images` → `{"mnist_result": <digit>}`."""

    def load(self) -> None:
        self.session = onnx_session(self.model_dir / "model.onnx")
        self.input_name = self.session.get_inputs()[0].name

    def warmup(self) -> None:
        """Decode a PNG and classify it: the first real request then pays no lazy imports."""
        digit = np.zeros((28, 28), dtype=np.uint8)
        digit[6:22, 12:16] = 255
        buffer = io.BytesIO()
        Image.fromarray(digit).save(buffer, format="PNG")
        self.predict(Inputs(files={"images": UploadedFile("warmup.png", "image/png", buffer.getvalue())}))

    def predict(self, inputs: Inputs) -> dict[str, int]:
        (answer,) = self.predict_batch([self.prepare(inputs)])
        if isinstance(answer, InvalidInput):
            raise answer
        return answer

    def prepare(self, inputs: Inputs) -> Upload:
        """Decode one upload: its errors fail only its own request."""
        upload = inputs.files["images"]
        return Upload(open_image(upload.data, upload.filename), upload.filename)

    def predict_batch(self, items: list[Upload]) -> list[dict[str, int] | InvalidInput]:
        """Preprocess the batch (uploads of a size together) and classify it with one onnxruntime
        call (the model's batch dimension is dynamic). An upload with no digit gets its
        InvalidInput in its place: it fails alone."""
        tensors = images_to_tensors([item.image for item in items])
        ready = [tensor for tensor in tensors if isinstance(tensor, np.ndarray)]
        digits = iter(self._classify(ready) if ready else [])
        return [
            {"mnist_result": next(digits)} if isinstance(tensor, np.ndarray) else _invalid(item, tensor)
            for item, tensor in zip(items, tensors)
        ]

    def _classify(self, tensors: list[np.ndarray]) -> list[int]:
        batch = np.stack(tensors).reshape(len(tensors), 1, SIDE, SIDE)
        (logits,) = self.session.run(None, {self.input_name: batch})
        return [int(digit) for digit in np.argmax(logits, axis=1)]


class Upload(NamedTuple):
    """A decoded upload waiting for its batch."""

    image: Image.Image
    filename: str


def _invalid(upload: Upload, error: Exception) -> InvalidInput:
    """The 400 for an upload that preprocessing could not turn into a digit."""
    if isinstance(error, NoDigitError):
        return InvalidInput(str(error), error_code="MASERVE.NO_DIGIT")
    return InvalidInput(f"'{upload.filename}' could not be decoded: {error}", error_code="MASERVE.INVALID_IMAGE")


def open_image(data: bytes, filename: str) -> Image.Image:
    """Open an upload, checking format and declared size before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidInput(
            f"'{filename}' is not an image in a supported format (JPEG, PNG, BMP, GIF, WebP, TIFF)",
            error_code="MASERVE.INVALID_IMAGE",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(f"'{filename}' declares too many pixels", error_code="MASERVE.IMAGE_TOO_LARGE") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"'{filename}' could not be read: {exc}", error_code="MASERVE.INVALID_IMAGE") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidInput(
            f"'{filename}' declares {width}x{height} pixels, more than the limit of {MAX_IMAGE_PIXELS}",
            error_code="MASERVE.IMAGE_TOO_LARGE",
        )
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"'{filename}' is truncated or corrupt: {exc}", error_code="MASERVE.INVALID_IMAGE") from None
    return image
