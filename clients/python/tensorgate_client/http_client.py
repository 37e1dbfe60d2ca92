"""The HTTP client over the REST shim, with Triton's binary tensor extension.

Inputs go out as raw bytes after the JSON header (`Inference-Header-Content-Length`), and
outputs are asked for as binary, so tensors are never spelled out as JSON numbers.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from tensorgate_client.errors import HTTP_TO_CODE, InferenceServerError
from tensorgate_client.messages import Parameter
from tensorgate_client.options import REQUEST_ID, RetryPolicy, TlsOptions, new_request_id
from tensorgate_client.tensors import datatype_of, from_raw, to_raw

HEADER_LENGTH = "Inference-Header-Content-Length"


class HttpInferenceClient:
    """One keep-alive HTTP/1.1 connection to the server; not thread-safe (one per thread)."""

    def __init__(
        self,
        url: str = "http://localhost:8000",
        *,
        tls: TlsOptions | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self._https = parts.scheme == "https" or tls is not None
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._tls = tls
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.last_request_id = ""
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection; calls after this fail."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> HttpInferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                context = (self._tls or TlsOptions()).ssl_context()
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=context
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=timeout
                )
        self._connection.timeout = timeout
        if self._connection.sock is not None:
            self._connection.sock.settimeout(timeout)
        return self._connection

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        request_id = request_id or new_request_id()
        self.last_request_id = request_id
        all_headers = {REQUEST_ID: request_id, **(headers or {})}
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        delays = self.retry.delays()
        while True:
            try:
                connection = self._connect(max(deadline - time.monotonic(), 0.001))
                connection.request(method, path, body=body, headers=all_headers)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
                reply = {k.lower(): v for k, v in response.getheaders()}
                if status != 503:
                    return status, reply, payload
                failure = InferenceServerError(
                    "UNAVAILABLE", _error_message(payload) or "service unavailable", request_id
                )
            except TimeoutError:
                self.close()
                raise InferenceServerError(
                    "DEADLINE_EXCEEDED", "deadline exceeded", request_id
                ) from None
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()  # reconnect on the next attempt
                failure = InferenceServerError(
                    "UNAVAILABLE", f"{type(exc).__name__}: {exc}", request_id
                )
            delay = next(delays, None)
            if delay is None or time.monotonic() + delay >= deadline:
                raise failure
            time.sleep(delay)

    def _json(self, method: str, path: str, document: Any = None) -> Any:
        body = None if document is None else json.dumps(document).encode()
        status, _, payload = self._request(method, path, body)
        if status >= 400:
            raise _http_error(status, payload, self.last_request_id)
        return json.loads(payload) if payload else None

    def _ok(self, path: str) -> bool:
        status, _, payload = self._request("GET", path)
        if status in (200, 400):
            return status == 200
        raise _http_error(status, payload, self.last_request_id)

    @staticmethod
    def _model_path(model: str, version: str) -> str:
        path = f"/v2/models/{quote(model, safe='')}"
        return f"{path}/versions/{quote(version, safe='')}" if version else path

    # Health and metadata ---------------------------------------------------------------

    def server_live(self) -> bool:
        """Whether the server process serves (ServerLive)."""
        return self._ok("/v2/health/live")

    def server_ready(self) -> bool:
        """Whether the server is ready for inference (ServerReady)."""
        return self._ok("/v2/health/ready")

    def model_ready(self, model: str, version: str = "") -> bool:
        """Whether a version of the model is loaded and ready (ModelReady)."""
        return self._ok(self._model_path(model, version) + "/ready")

    def server_metadata(self) -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return dict(self._json("GET", "/v2"))

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's versions, platform and input and output tensors."""
        return dict(self._json("GET", self._model_path(model, version)))

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's completed config.pbtxt, as a dict of its JSON form."""
        return dict(self._json("GET", self._model_path(model, version) + "/config"))

    def statistics(self, model: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's ModelStatistics for one model, or every loaded model."""
        path = self._model_path(model, version) + "/stats" if model else "/v2/models/stats"
        return list(self._json("GET", path)["model_stats"])

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model in the repository with its state and, if any, the reason."""
        return list(self._json("POST", "/v2/repository/index", {"ready": ready_only}))

    def load_model(self, model: str) -> None:
        """Load or reload a model (the server must run in explicit model-control mode)."""
        self._json("POST", f"/v2/repository/models/{quote(model, safe='')}/load", {})

    def unload_model(self, model: str) -> None:
        """Unload a model once its running requests finish (explicit mode)."""
        self._json("POST", f"/v2/repository/models/{quote(model, safe='')}/unload", {})

    # Inference -------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        id: str = "",
        parameters: Mapping[str, Parameter] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one inference with binary tensors both ways; outputs by name."""
        header: dict[str, Any] = {"inputs": []}
        raw_parts = []
        for name, value in inputs.items():
            array = np.asarray(value)
            datatype = datatype_of(array)
            raw = to_raw(array, datatype)
            raw_parts.append(raw)
            header["inputs"].append(
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        if outputs:
            header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
        params: dict[str, Any] = dict(parameters or {})
        params["binary_data_output"] = True
        header["parameters"] = params
        if id:
            header["id"] = id
        json_part = json.dumps(header).encode()
        status, reply, payload = self._request(
            "POST",
            self._model_path(model, version) + "/infer",
            b"".join([json_part, *raw_parts]),
            {HEADER_LENGTH: str(len(json_part)), "Content-Type": "application/octet-stream"},
            timeout,
            request_id,
        )
        if status >= 400:
            raise _http_error(status, payload, self.last_request_id)
        return _infer_outputs(payload, reply.get(HEADER_LENGTH.lower()))


def _infer_outputs(payload: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    length = int(header_length) if header_length is not None else len(payload)
    document = json.loads(payload[:length])
    view = memoryview(payload)
    offset = length
    result: dict[str, np.ndarray] = {}
    for output in document["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            result[output["name"]] = from_raw(
                view[offset : offset + size], output["datatype"], output["shape"]
            )
            offset += size
        else:
            data = output["data"]
            if output["datatype"] == "BYTES":
                array = np.array(
                    [d.encode() if isinstance(d, str) else d for d in data], dtype=object
                )
            else:
                array = np.array(data, dtype=from_raw(b"", output["datatype"], [0]).dtype)
            result[output["name"]] = array.reshape(output["shape"])
    return result


def _error_message(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("error", ""))
    except (ValueError, AttributeError):
        return payload.decode(errors="replace")[:200]


def _http_error(status: int, payload: bytes, request_id: str) -> InferenceServerError:
    code = HTTP_TO_CODE.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")
    return InferenceServerError(code, _error_message(payload) or f"HTTP {status}", request_id)
