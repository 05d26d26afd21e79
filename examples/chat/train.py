"""Train the byte-level GRU language model of this example on corpus.txt and export model.onnx.

A character model small enough to train on two CPU cores in a few minutes and to generate at tens
of microseconds per byte: 256-byte vocabulary, a 64-wide embedding, one GRU layer of 256 and a
linear head. Seeded and single-process, with a fixed number of steps, so a rerun on the same
machine rewrites the same model. torch is needed here only, never to serve:

    .venv/bin/pip install torch==2.13.0 onnx
    .venv/bin/python examples/chat/train.py

The export is checked against torch with onnxruntime (prefill, and prefill followed by single
steps), then generator.py writes a sample from the exported file.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 20240611
EMBED, HIDDEN, LAYERS = 64, 256, 1
SEQ, BATCH, STEPS = 128, 32, 1600
LR, LR_MIN, CLIP = 3e-3, 1e-4, 1.0
VALID_BYTES = 4096  # the corpus' tail, never trained on: a check that it learnt more than by heart
OPSET = 17
DROPOUT = 0.3  # on the GRU's outputs, in training only: the corpus is small enough to learn by heart


class ByteGRU(nn.Module):
    """bytes → next-byte logits, with the GRU state passed in and out (what ONNX sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, EMBED)
        self.gru = nn.GRU(EMBED, HIDDEN, LAYERS, batch_first=True)
        self.dropout = nn.Dropout(DROPOUT)  # an identity in eval mode, so not in the export
        self.head = nn.Linear(HIDDEN, 256)

    def forward(self, input_ids: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, next_state = self.gru(self.embed(input_ids), state)
        return self.head(self.dropout(hidden)), next_state


def zero_state(batch: int = 1) -> torch.Tensor:
    return torch.zeros(LAYERS, batch, HIDDEN)


def batches(data: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """BATCH random windows of SEQ + 1 bytes: inputs and their next bytes."""
    starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=generator)
    return torch.stack([data[s:s + SEQ + 1] for s in starts.tolist()])


def loss_of(model: ByteGRU, windows: torch.Tensor) -> torch.Tensor:
    logits, _ = model(windows[:, :-1], zero_state(len(windows)))
    return nn.functional.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: ByteGRU, data: torch.Tensor) -> float:
    """Mean next-byte loss (nats) over `data`, read as one sequence."""
    logits, _ = model(data[None, :-1], zero_state())
    return float(nn.functional.cross_entropy(logits[0], data[1:]))


def train(data: torch.Tensor, valid: torch.Tensor) -> tuple[ByteGRU, float]:
    model = ByteGRU()
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(SEED)
    smoothed = math.log(256)
    started = time.perf_counter()
    for step in range(1, STEPS + 1):
        for group in optimiser.param_groups:  # cosine decay from LR to LR_MIN
            group["lr"] = LR_MIN + (LR - LR_MIN) * 0.5 * (1 + math.cos(math.pi * (step - 1) / STEPS))
        loss = loss_of(model, batches(data, generator))
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimiser.step()
        smoothed = 0.98 * smoothed + 0.02 * loss.item()
        if step % 200 == 0 or step == STEPS:
            model.eval()
            held = evaluate(model, valid)
            model.train()
            print(f"step {step:5d}  train loss {smoothed:.3f}  held-out loss {held:.3f}  "
                  f"{time.perf_counter() - started:6.1f} s", flush=True)
    model.eval()
    return model, smoothed


def export(model: ByteGRU, path: Path) -> None:
    # The exporter warns that a GRU's batch size is fixed unless its state is an input: it is one.
    warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
    ids = torch.tensor([list(b"The Fox said to the Crow")], dtype=torch.long)
    torch.onnx.export(
        model, (ids, zero_state()), str(path), dynamo=False, opset_version=OPSET,
        input_names=["input_ids", "state"], output_names=["logits", "next_state"],
        dynamic_axes={"input_ids": {1: "T"}, "logits": {1: "T"}},
    )


@torch.no_grad()
def check_export(model: ByteGRU, path: Path) -> None:
    """onnxruntime agrees with torch: a whole prompt at once, and a prefill then single bytes."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    text = list(b"A Lion was awakened from sleep by a Mouse running over his face.")
    ids = torch.tensor([text], dtype=torch.long)
    want_logits, want_state = model(ids, zero_state())
    got_logits, got_state = session.run(None, {"input_ids": ids.numpy(), "state": zero_state().numpy()})
    np.testing.assert_allclose(got_logits, want_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_state, want_state.numpy(), rtol=1e-4, atol=1e-4)
    split = 10
    _, state = session.run(None, {"input_ids": ids[:, :split].numpy(), "state": zero_state().numpy()})
    for position in range(split, len(text)):
        step_logits, state = session.run(None, {"input_ids": ids[:, position:position + 1].numpy(), "state": state})
        np.testing.assert_allclose(step_logits[0, 0], want_logits[0, position].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state, want_state.numpy(), rtol=1e-4, atol=1e-4)


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    corpus = (HERE / "corpus.txt").read_bytes()
    data = torch.tensor(list(corpus), dtype=torch.long)
    train_data, valid = data[:-VALID_BYTES], data[-VALID_BYTES:]
    started = time.perf_counter()
    model, final = train(train_data, valid)
    seconds = time.perf_counter() - started
    path = HERE / "model.onnx"
    export(model, path)
    check_export(model, path)
    print(f"trained {STEPS} steps in {seconds:.0f} s; final train loss {final:.3f} nats/byte; "
          f"held-out {evaluate(model, valid):.3f}; model.onnx {path.stat().st_size} bytes")

    sys.path.insert(0, str(HERE))
    from generator import ByteLM  # the serving code, on the exported file

    prompt = "THE FOX AND THE LION\n\nA Fox"
    sample = "".join(ByteLM(path).generate(prompt, max_tokens=300, temperature=0.6, seed=SEED))
    print(f"sample (temperature 0.6):\n{prompt}{sample}")


if __name__ == "__main__":
    main()
