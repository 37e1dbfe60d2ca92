"""Which config.pbtxt fields tensorgate implements; any other field fails the model's load.

The check walks every field the config sets, so a field added to the schema later is
refused by default until someone implements it and lists it here. docs/pages/config-support.md is
the same table for users.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.errors import ModelLoadError

# A field maps to ALL (every sub-field supported) or to the table of its supported sub-fields.
ALL: dict[str, Any] = {"*": True}
_QUEUE_POLICY = ALL

SUPPORTED: dict[str, Any] = {
    "name": ALL,
    "platform": ALL,
    "backend": ALL,
    "version_policy": ALL,
    "max_batch_size": ALL,
    "input": {
        "name": ALL,
        "data_type": ALL,
        "format": ALL,
        "dims": ALL,
        "optional": ALL,
        "reshape": ALL,
        "allow_ragged_batch": ALL,
    },
    "output": {
        "name": ALL,
        "data_type": ALL,
        "dims": ALL,
        "reshape": ALL,
        "label_filename": ALL,
    },
    "dynamic_batching": {
        "preferred_batch_size": ALL,
        "max_queue_delay_microseconds": ALL,
        "preserve_ordering": ALL,
        "priority_levels": ALL,
        "default_priority_level": ALL,
        "default_queue_policy": _QUEUE_POLICY,
        "priority_queue_policy": _QUEUE_POLICY,
    },
    "sequence_batching": {
        "max_sequence_idle_microseconds": ALL,
        "control_input": ALL,
        # Requests rescheduled by Triton Python models; runners/build.py refuses the others.
        "iterative_sequence": ALL,
        "state": {
            "input_name": ALL,
            "output_name": ALL,
            "data_type": ALL,
            "dims": ALL,
            "initial_state": ALL,
        },
        "direct": {"max_queue_delay_microseconds": ALL, "minimum_slot_utilization": ALL},
        "oldest": {
            "max_candidate_sequences": ALL,
            "max_queue_delay_microseconds": ALL,
            "preferred_batch_size": ALL,
            "preserve_ordering": ALL,
        },
    },
    "ensemble_scheduling": {
        "step": {"model_name": ALL, "model_version": ALL, "input_map": ALL, "output_map": ALL}
    },
    "instance_group": {"name": ALL, "kind": ALL, "count": ALL, "gpus": ALL, "rate_limiter": ALL},
    "default_model_filename": ALL,
    "model_transaction_policy": {"decoupled": ALL},
    # Handed to the backend and the model as Triton does; keys a backend reads are documented.
    "parameters": ALL,
    "model_warmup": ALL,
    # onnxruntime's graph optimization level (backends/onnx_options.py); refused elsewhere.
    "optimization": {"graph": {"level": ALL}},
    "response_cache": ALL,
    # Ragged batching (batching/ragged.py): the dynamic batcher's, checked when it is built.
    "batch_input": ALL,
    "batch_output": ALL,
}

# Why a field is refused, for the ones users meet most; others get a generic reason.
REASONS = {
    "optimization.priority": "stream priorities are not implemented",
    "optimization.cuda": "CUDA graphs and the other CUDA execution settings are not implemented",
    "optimization.execution_accelerators": "execution accelerators (TensorRT, OpenVINO) are "
    "not implemented",
    "optimization.input_pinned_memory": "pinned-memory settings are not implemented",
    "optimization.output_pinned_memory": "pinned-memory settings are not implemented",
    "optimization.gather_kernel_buffer_threshold": "it is not implemented",
    "optimization.eager_batching": "it is not implemented",
    "model_operations": "model operations (op libraries) are not implemented",
    "model_repository_agents": "repository agents are not implemented",
    "cc_model_filenames": "per-compute-capability model files are not implemented",
    "metric_tags": "custom metric labels are not implemented",
    "runtime": "custom backend runtimes are not implemented",
    "instance_group.secondary_devices": "secondary devices are not supported",
    "instance_group.profile": "optimization profiles are TensorRT's and not supported",
    "instance_group.passive": "passive instances are not implemented",
    "instance_group.host_policy": "host policies are not implemented",
    "sequence_batching.state.use_same_buffer_for_input_output": "states live in host memory, "
    "where each sequence's state is its own array already",
    "sequence_batching.state.use_growable_memory": "states live in host memory; growable "
    "GPU state buffers are not implemented",
    "input.is_shape_tensor": "shape tensors are TensorRT's and not supported",
    "output.is_shape_tensor": "shape tensors are TensorRT's and not supported",
}


def check_supported(config: mc.ModelConfig) -> None:
    """Raise ModelLoadError naming the first config field that tensorgate does not implement."""
    _walk(config, SUPPORTED, "")


def _walk(message: Any, table: dict[str, Any], prefix: str) -> None:
    for descriptor, value in message.ListFields():
        path = f"{prefix}{descriptor.name}"
        allowed = table.get(descriptor.name)
        if allowed is None and _empty(descriptor, value):
            continue  # `response_cache { }`: the defaults, which ask for nothing
        if allowed is None:
            reason = REASONS.get(path, "it is not implemented")
            raise ModelLoadError(
                f"config field '{path}' is not supported by tensorgate: {reason}; "
                "remove it from config.pbtxt (docs/pages/config-support.md lists what is)"
            )
        if allowed is ALL or descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            continue
        if descriptor.is_repeated:
            for item in value:
                _walk(item, allowed, f"{path}.")
        else:
            _walk(value, allowed, f"{path}.")


def _empty(descriptor: FieldDescriptor, value: Any) -> bool:
    single_message = descriptor.type == FieldDescriptor.TYPE_MESSAGE and not descriptor.is_repeated
    return single_message and value.ByteSize() == 0
