"""The data plane: request types, validation, statistics, and model calls."""
