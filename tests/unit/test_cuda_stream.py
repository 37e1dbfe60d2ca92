"""The CUDA-stream executor imports everywhere; without a GPU it refuses with a clear reason."""

from __future__ import annotations

import numpy as np
import pytest
from tensorgate.errors import ModelLoadError
from tensorgate.executors.cuda import CudaStream, cuda_available


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_cuda_stream_without_a_gpu_is_a_load_error_naming_the_device() -> None:
    with pytest.raises(ModelLoadError, match="cuda:0 but torch sees no CUDA device"):
        CudaStream("cuda:0")


@pytest.mark.skipif(not cuda_available(), reason="no CUDA device visible to torch")
def test_stream_round_trip_through_pinned_buffers_matches_the_host_result() -> None:
    import torch

    stream = CudaStream("cuda:0")
    host = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    with stream.context():
        device = stream.to_device("x", host)
        staged = stream.to_host("y", device * 2)
    stream.wait()
    first = staged.clone().numpy()  # a copy, as the torch backend takes one
    with stream.context():  # the next batch reuses the pinned buffer ...
        stream.to_host("y", stream.to_device("x", host) * 0)
    stream.wait()
    np.testing.assert_array_equal(first, host.numpy() * 2)  # ... without touching `first`
