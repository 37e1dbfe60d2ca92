"""A tensorgate repository serving the peers' benchmark models with the peers' settings.

The ONNX files are the ones ../shared/peers/setup.sh made for Triton, MLServer and KServe;
configs match Triton's (max_batch_size 32, one CPU instance; delays below) and
every session gets one intra-op thread, as every peer does. `--no-batching` drops
`dynamic_batching`, so each request runs alone.
usage: python benchmarks/peer_repository.py PEER_MODELS_DIR OUT_DIR [--no-batching]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# model -> (inputs, outputs, max_queue_delay_microseconds). Triton's configs use 500 µs for
# add_sub and mlp; here they get 0: requests still batch whenever the instance is busy, and
# a lone request does not wait half a millisecond for company that is not coming.
MODELS = {
    "add_sub": ((("INPUT0", [16]), ("INPUT1", [16])), (("OUTPUT0", [16]), ("OUTPUT1", [16])), 0),
    "mlp": ((("INPUT", [256]),), (("OUTPUT", [10]),), 0),
    "mobilenet_v2": ((("INPUT", [3, 224, 224]),), (("OUTPUT", [1000]),), 2000),
}


def _tensors(kind: str, tensors: tuple[tuple[str, list[int]], ...]) -> str:
    body = ", ".join(f'{{ name: "{n}", data_type: TYPE_FP32, dims: {d} }}' for n, d in tensors)
    return f"{kind} [{body}]\n"


def build(models: Path, out: Path, batching: bool) -> None:
    for name, (inputs, outputs, delay_us) in MODELS.items():
        version = out / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(models / name / "1" / "model.onnx", version / "model.onnx")
        config = (
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 32\n'
            "instance_group [{ kind: KIND_CPU, count: 1 }]\n"
            'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
            + _tensors("input", inputs)
            + _tensors("output", outputs)
        )
        if batching:
            config += f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
        (out / name / "config.pbtxt").write_text(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-batching", action="store_true")
    args = parser.parse_args()
    build(args.models, args.out, not args.no_batching)


if __name__ == "__main__":
    main()
