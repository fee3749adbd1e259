"""Batch-norm checkpoints written the way PyTorch writes them, for tests/checkpoints.rs.

A module's `state_dict()` holds, per batch norm, `<prefix>.weight`, `.bias` (gamma, beta),
`.running_mean`, `.running_var` (1-D, C values) and `.num_batches_tracked` (a 0-dimensional
int64); `safetensors.torch.save_file` writes them as F32 (or F16/BF16 for a half model) and I64.
This script writes the same layouts with numpy (no PyTorch needed): F32, F16 and I64 through
safetensors' numpy API, BF16 as raw bytes (numpy has no bfloat16), plus the files a loader must
refuse. `expected.json` holds the values each good file must load as (float32).

    python3 scripts/make_checkpoints.py tests/fixtures/checkpoints
"""
import json
import os
import struct
import sys

import numpy as np
from safetensors.numpy import save_file


def layer(prefix, channels, seed, count):
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}.weight": rng.normal(1.0, 0.5, channels).astype(np.float32),
        f"{prefix}.bias": rng.normal(0.0, 1.0, channels).astype(np.float32),
        f"{prefix}.running_mean": rng.normal(0.0, 2.0, channels).astype(np.float32),
        f"{prefix}.running_var": (0.5 + rng.random(channels)).astype(np.float32),
        f"{prefix}.num_batches_tracked": np.array(count, dtype=np.int64),
    }


def bf16_bytes(values):
    """Round-to-nearest-even float32 -> bfloat16, as torch does; returns bytes and the f32 values."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    as_f32 = (rounded.astype(np.uint32) << 16).view(np.float32)
    return rounded.tobytes(), as_f32


def write_raw(path, tensors):
    """A safetensors file from (name, dtype, shape, bytes), in the format's own layout."""
    header, offset, data = {}, 0, b""
    for name, dtype, shape, raw in sorted(tensors, key=lambda t: t[0]):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def main(out):
    os.makedirs(out, exist_ok=True)
    expected = {}

    # A whole model: two batch norms and a convolution between them.
    model = {**layer("layer1.0.bn1", 3, 1, 7), **layer("layer1.0.bn2", 5, 2, 7)}
    model["layer1.0.conv2.weight"] = np.ones((5, 3, 3, 3), dtype=np.float32)
    save_file(model, os.path.join(out, "model_f32.safetensors"))
    for prefix in ("layer1.0.bn1", "layer1.0.bn2"):
        expected[f"model_f32.safetensors:{prefix}"] = {
            name: model[f"{prefix}.{name}"].tolist()
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        }

    # A half model: F16 gamma and beta, BF16 running stats (as torch's bf16 modules save).
    f32 = layer("bn", 4, 3, 12)
    weight16 = f32["bn.weight"].astype(np.float16)
    bias16 = f32["bn.bias"].astype(np.float16)
    mean_raw, mean_back = bf16_bytes(f32["bn.running_mean"])
    var_raw, var_back = bf16_bytes(f32["bn.running_var"])
    write_raw(os.path.join(out, "half.safetensors"), [
        ("bn.weight", "F16", [4], weight16.tobytes()),
        ("bn.bias", "F16", [4], bias16.tobytes()),
        ("bn.running_mean", "BF16", [4], mean_raw),
        ("bn.running_var", "BF16", [4], var_raw),
        ("bn.num_batches_tracked", "I64", [], np.array(12, dtype=np.int64).tobytes()),
    ])
    expected["half.safetensors:bn"] = {
        "weight": weight16.astype(np.float32).tolist(),
        "bias": bias16.astype(np.float32).tolist(),
        "running_mean": mean_back.tolist(),
        "running_var": var_back.tolist(),
        "num_batches_tracked": 12,
    }

    # An old checkpoint without num_batches_tracked (PyTorch reads it as 0).
    old = layer("bn", 2, 4, 0)
    del old["bn.num_batches_tracked"]
    save_file(old, os.path.join(out, "no_count.safetensors"))
    expected["no_count.safetensors:bn"] = {
        name: old[f"bn.{name}"].tolist() for name in ("weight", "bias", "running_mean", "running_var")
    }
    expected["no_count.safetensors:bn"]["num_batches_tracked"] = 0

    # Files to refuse, each naming one key.
    missing = layer("bn", 3, 5, 1)
    del missing["bn.running_var"]
    save_file(missing, os.path.join(out, "missing_key.safetensors"))
    short = layer("bn", 3, 6, 1)
    short["bn.bias"] = short["bn.bias"][:2]
    save_file(short, os.path.join(out, "wrong_length.safetensors"))
    integer = layer("bn", 3, 7, 1)
    integer["bn.weight"] = np.arange(3, dtype=np.int32)
    save_file(integer, os.path.join(out, "wrong_dtype.safetensors"))

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/checkpoints")
