"""Build examples/resnet/model.onnx: torchvision's ResNet-50 architecture with seeded random weights.

    python examples/resnet/build_model.py            # writes examples/resnet/model.onnx (~102 MB)
    python examples/resnet/build_model.py --sample   # also rewrites samples/sample.jpg (committed)

The graph is written directly with the `onnx` package's helper API (no torch, no torchvision):
conv 7x7/2 (64), max-pool 3x3/2, four stages of bottleneck blocks [3, 4, 6, 3] with widths
64/128/256/512 and expansion 4 (the stride on the 3x3 conv, as torchvision's ResNet v1.5 has it;
a 1x1 projection shortcut on the first block of each stage), global average pool, FC 1000.
BatchNorm is folded into the convolutions (each conv has a bias), as an exported and optimised
model has it. Weights: He (Kaiming normal, fan-out) initialisation from a fixed numpy seed, so
two builds write the same bytes; the last conv of each block is scaled down so the activations
stay bounded through 16 residual additions (scores finite, logits of sane size).

The weights are random: the model classifies nothing. It is a compute-bound workload (about
4.1 GFLOPs per 224x224 image) for measuring the server, not a classifier.

Input `images` float32 [N, 3, 224, 224] (N dynamic), output `logits` float32 [N, 1000].
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
SEED = 20240616
STAGES = (
    (64, 3, 1),
    (128, 4, 2),
    (256, 6, 2),
    (512, 3, 2),
)  # (width, blocks, stride of first block)
EXPANSION = 4
CLASSES = 1000
OPSET = 17


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        gain: float = 1.0,
        relu: bool = True,
    ) -> str:
        """Conv (BatchNorm folded: weight and bias), then ReLU unless told otherwise."""
        fan_out = cout * k * k
        w = self.rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(
            gain * np.sqrt(2.0 / fan_out)
        )
        b = (
            self.rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01)
        ).astype(np.float32)
        wn, bn, out = self.name("conv_w"), self.name("conv_b"), self.name("conv")
        self.inits += [numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)]
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, wn, bn],
                [out],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
                name=out,
            )
        )
        return self.relu(out) if relu else out

    def relu(self, x: str) -> str:
        out = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    def bottleneck(self, x: str, cin: int, width: int, stride: int) -> tuple[str, int]:
        cout = width * EXPANSION
        y = self.conv(x, cin, width, 1)
        y = self.conv(y, width, width, 3, stride)
        # zero-init-residual in spirit: the last conv small, so the sum stays bounded
        y = self.conv(y, width, cout, 1, gain=0.2, relu=False)
        shortcut = x
        if stride != 1 or cin != cout:
            shortcut = self.conv(x, cin, cout, 1, stride, relu=False)
        out = self.name("add")
        self.nodes.append(helper.make_node("Add", [y, shortcut], [out], name=out))
        return self.relu(out), cout


def build(seed: int = SEED) -> onnx.ModelProto:
    b = Builder(seed)
    x = b.conv("images", 3, 64, 7, 2)
    pooled = b.name("maxpool")
    b.nodes.append(
        helper.make_node(
            "MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    x, channels = pooled, 64
    for width, blocks, stride in STAGES:
        for i in range(blocks):
            x, channels = b.bottleneck(x, channels, width, stride if i == 0 else 1)
    gap, flat = b.name("gap"), b.name("flatten")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [gap], name=gap))
    b.nodes.append(helper.make_node("Flatten", [gap], [flat], axis=1, name=flat))
    # gain 16: logits with a spread like a trained model's (std about 2), not a flat softmax
    fc_w = b.rng.standard_normal((CLASSES, channels), dtype=np.float32) * np.float32(
        16 * np.sqrt(1.0 / channels)
    )
    fc_b = np.zeros(CLASSES, dtype=np.float32)
    b.inits += [
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    b.nodes.append(
        helper.make_node(
            "Gemm", [flat, "fc_w", "fc_b"], ["logits"], transB=1, name="fc"
        )
    )
    graph = helper.make_graph(
        b.nodes,
        "resnet50_random",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, ["N", 3, 224, 224]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="maserve-examples",
    )
    model.ir_version = 8  # readable by onnxruntime 1.14 and later
    model.doc_string = f"ResNet-50 (torchvision architecture, BatchNorm folded), random He-init weights, seed {seed}"
    return model


def write_sample(path: Path) -> None:
    """A 320x240 JPEG of MNIST's seven.jpg on a colour gradient: a small photo-like upload that
    the service resizes (shorter side 240 -> 256) and crops like any other."""
    from PIL import Image

    seven = (
        Image.open(HERE.parent / "mnist" / "samples" / "seven.jpg")
        .convert("L")
        .resize((200, 200))
    )
    x = np.linspace(0, 1, 320, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, 240, dtype=np.float32)[:, None]
    rgb = np.stack(
        [200 * x + 30 * y, 150 * y + 40 + 0 * x, 220 - 180 * x + 0 * y], axis=2
    )
    image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    image.paste(
        Image.new("RGB", (200, 200), (250, 250, 240)),
        (60, 20),
        Image.eval(seven, lambda v: 255 - v),
    )
    path.parent.mkdir(exist_ok=True)
    image.save(path, format="JPEG", quality=85)
    print(f"{path}: {path.stat().st_size} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "model.onnx")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--sample", action="store_true", help="also write samples/sample.jpg"
    )
    parser.add_argument(
        "--no-run", action="store_true", help="skip the onnxruntime check"
    )
    args = parser.parse_args(argv)
    if args.sample:
        write_sample(HERE / "samples" / "sample.jpg")
    start = time.perf_counter()
    model = build(args.seed)
    onnx.checker.check_model(model)
    args.out.write_bytes(model.SerializeToString())
    built = time.perf_counter() - start
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(
        f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, {params / 1e6:.2f} M parameters, built in {built:.1f} s"
    )
    if not args.no_run:
        import onnxruntime as ort

        session = ort.InferenceSession(
            str(args.out), providers=["CPUExecutionProvider"]
        )
        batch = np.random.default_rng(0).standard_normal(
            (2, 3, 224, 224), dtype=np.float32
        )
        (logits,) = session.run(None, {"images": batch})
        assert logits.shape == (2, CLASSES), logits.shape
        assert np.isfinite(logits).all(), "non-finite logits"
        print(
            f"onnxruntime: logits {logits.shape}, |max| {np.abs(logits).max():.2f}, std {logits.std():.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
