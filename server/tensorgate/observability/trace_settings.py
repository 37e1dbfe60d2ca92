"""Triton's trace settings: which requests are traced, server-wide and per model.

A model's settings are the server's start values, overridden by what clients set globally,
overridden by what they set for that model; clearing a setting (null, or no values) falls back
one layer. `trace_rate` N traces every N-th request (the first, the N+1-th, ...) and
`trace_count` is how many traces are left (-1: no limit). The rate's counter and the count's
budget belong to the layer that set them: a model given its own count spends its own budget,
the others share the server's. A sampled or unsampled traceparent from the client decides for
its request instead of the rate, but spends the budget all the same.

`trace_file` is fixed at start: a client that could choose a path on the server could write
any file the server may write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tensorgate.errors import FailedPrecondition, InvalidArgument

LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
KEYS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency")
_GLOBAL = ""  # the layer key of the server-wide settings

Values = list[str]


class TraceSettings:
    """The layered settings and each layer's sampling counter and remaining budget."""

    def __init__(
        self,
        level: Iterable[str] = ("TIMESTAMPS",),
        rate: int = 1,
        count: int = -1,
        log_frequency: int = 0,
        trace_file: str = "",
        files: bool = True,
    ) -> None:
        # Traces go to Triton's trace file, not OpenTelemetry: only the file records tensors,
        # and log_frequency means something only for it.
        self.files = files
        self.initial: dict[str, Values] = {
            "trace_file": [trace_file],
            "trace_level": list(level),
            "trace_rate": [str(rate)],
            "trace_count": [str(count)],
            "log_frequency": [str(log_frequency)],
        }
        self._check(self.initial)
        self._layers: dict[str, dict[str, Values]] = {_GLOBAL: {}}
        self._seen: dict[str, int] = {_GLOBAL: 0}  # requests counted for the rate, per layer
        self._left: dict[str, int] = {_GLOBAL: count}  # traces left, per layer
        self._rates: dict[str, int] = {_GLOBAL: rate}  # each layer's rate, resolved once

    # -- reading and changing ------------------------------------------------------------

    def get(self, model: str = "") -> dict[str, Values]:
        """The settings in force for `model` ("" for the server-wide ones); `trace_count` is
        what is left of the budget."""
        merged = self._configured(model)
        merged["trace_count"] = [str(self._left[self._owner(model, "trace_count")])]
        return merged

    def _configured(self, model: str) -> dict[str, Values]:
        return {**self.initial, **self._layers[_GLOBAL], **self._layers.get(model, {})}

    def update(self, changes: Mapping[str, Values | None], model: str = "") -> dict[str, Values]:
        """Apply Triton's update: each key set to values, or cleared by None / no values."""
        layer = dict(self._layers.get(model, {}))
        for key, values in changes.items():
            if key not in KEYS:
                raise InvalidArgument(f"unknown trace setting '{key}'; known: {', '.join(KEYS)}")
            if not values:
                layer.pop(key, None)
            else:
                layer[key] = list(values)
        self._check(layer)
        self._layers[model] = layer
        if model and not layer:  # an emptied model follows the server's settings again
            del self._layers[model]
            self._seen.pop(model, None)
        if "trace_rate" in changes:
            self._seen[model] = 0
        if "trace_count" in changes:
            if model and "trace_count" not in layer:
                self._left.pop(model, None)  # back on the server's budget
            else:
                self._left[model] = int(self._configured(model)["trace_count"][0])
        # Sampling reads the rates for every request: resolve them here, once per change.
        self._rates = {name: int(self._configured(name)["trace_rate"][0]) for name in self._layers}
        return self.get(model)

    def _check(self, layer: Mapping[str, Values]) -> None:
        for key, values in layer.items():
            if key != "trace_level" and len(values) != 1:
                raise InvalidArgument(f"trace setting '{key}' takes one value, got {len(values)}")
        if "trace_file" in layer and layer["trace_file"] != self.initial["trace_file"]:
            raise InvalidArgument(
                "trace_file is fixed when the server starts (--trace-file): a client may not "
                "choose where the server writes"
            )
        levels = layer.get("trace_level", ["OFF"])
        if not levels:
            raise InvalidArgument("trace_level needs a level: OFF, TIMESTAMPS or TENSORS")
        for level in levels:
            if level not in LEVELS:
                raise InvalidArgument(f"unknown trace level '{level}'; levels: {', '.join(LEVELS)}")
        if "OFF" in levels and len(levels) > 1:
            raise InvalidArgument("trace level OFF cannot be combined with other levels")
        if "TENSORS" in levels and not self.files:
            raise InvalidArgument(
                "trace level TENSORS needs the trace file (--trace-file); OpenTelemetry spans "
                "carry timestamps only"
            )
        for key, least in (("trace_rate", 1), ("trace_count", -1), ("log_frequency", 0)):
            if key in layer:
                _whole(key, layer[key][0], least)
        if "log_frequency" in layer and layer["log_frequency"] != ["0"] and not self.files:
            raise InvalidArgument(
                "log_frequency applies to the trace file (--trace-file); OpenTelemetry spans "
                "are exported as they end"
            )

    def _owner(self, model: str, key: str) -> str:
        """The layer whose counter or budget `model` uses for `key`."""
        return model if key in self._layers.get(model, {}) else _GLOBAL

    # -- the request path ----------------------------------------------------------------

    def sample(self, model: str, parent_sampled: bool | None) -> tuple[str, ...] | None:
        """The levels to trace this request of `model` at, or None to leave it untraced."""
        layer = self._layers.get(model)
        levels = (layer or {}).get("trace_level") or self._layers[_GLOBAL].get(
            "trace_level", self.initial["trace_level"]
        )
        if levels[0] == "OFF" or parent_sampled is False:
            return None
        if parent_sampled is None:
            owner = model if layer is not None and "trace_rate" in layer else _GLOBAL
            seen = self._seen.get(owner, 0)
            self._seen[owner] = seen + 1
            if seen % self._rates[owner]:
                return None
        owner = self._owner(model, "trace_count")
        left = self._left[owner]
        if left == 0:
            return None
        if left > 0:
            self._left[owner] = left - 1
        return tuple(levels)


def _whole(key: str, text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise InvalidArgument(
            f"trace setting '{key}' must be a whole number >= {least}, got {text!r}"
        )
    return value


# What a server without a trace destination answers: nothing is traced.
TRACING_OFF: dict[str, Values] = {
    "trace_file": [""],
    "trace_level": ["OFF"],
    "trace_rate": ["1"],
    "trace_count": ["-1"],
    "log_frequency": ["0"],
}


def tracing_off() -> FailedPrecondition:
    """The error for changing trace settings on a server that has nowhere to put traces."""
    return FailedPrecondition(
        "tracing is off: start the server with --trace-file PATH (Triton's JSON trace file) or "
        "--trace-exporter console|otlp (OpenTelemetry) to trace requests"
    )
