"""ghz cannot be installed here, so its inputs are checked instead: the config names only
options ghz knows and a method the server serves, and the binary request file is what the
Python client builds today and what the server answers correctly when sent as-is."""

from __future__ import annotations

import importlib.util
import json

import grpc
import numpy as np
from conftest import ROOT, Server
from tensorgate_client.tensors import from_raw
from tensorgate_protos import grpc_service_pb2 as pb

GHZ = ROOT / "clients" / "ghz"
# The JSON keys of ghz's runner.Config (github.com/bojand/ghz, runner/config.go).
GHZ_KEYS = {
    "proto", "protoset", "call", "cacert", "cert", "key", "skipTLS", "cname", "authority",
    "insecure", "total", "concurrency", "connections", "qps", "duration", "duration-stop",
    "max-duration", "timeout", "data", "data-file", "binary-file", "metadata", "metadata-file",
    "stream-interval", "output", "format", "connect-timeout", "keepalive", "cpus",
    "import-paths", "name", "tags", "reflect-metadata", "debug", "host", "enable-compression",
}  # fmt: skip


def _make_request_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_request", GHZ / "make_request.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ghz_config_uses_known_options_and_a_served_method() -> None:
    config = json.loads((GHZ / "ghz.json").read_text())
    assert set(config) <= GHZ_KEYS, set(config) - GHZ_KEYS
    service, method = config["call"].rsplit(".", 1)
    assert service == "inference.GRPCInferenceService"
    assert method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    assert (GHZ / config["binary-file"]).is_file()


def test_binary_request_file_is_the_clients_request_and_the_server_answers_it(
    server: Server,
) -> None:
    committed = (GHZ / "add_sub_request.bin").read_bytes()
    assert committed == _make_request_module().add_sub_request(), "run make_request.py"
    config = json.loads((GHZ / "ghz.json").read_text())
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(
            "/" + config["call"].replace(".ModelInfer", "/ModelInfer"),
            request_serializer=None,  # the file's bytes go out as they are, as ghz sends them
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = call(committed, timeout=10, metadata=(("x-request-id", "ghz-1"),))
    outputs = {
        o.name: from_raw(raw, o.datatype, list(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    np.testing.assert_array_equal(outputs["OUTPUT0"], np.arange(1, 17, dtype=np.float32)[None])
    np.testing.assert_array_equal(outputs["OUTPUT1"], np.arange(-1, 15, dtype=np.float32)[None])
