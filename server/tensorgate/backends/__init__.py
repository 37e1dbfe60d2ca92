"""Backends: onnxruntime, torch, Python and Triton Python-backend models, behind one interface."""
