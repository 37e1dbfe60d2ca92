"""Where model code runs: instance threads and CUDA streams."""
