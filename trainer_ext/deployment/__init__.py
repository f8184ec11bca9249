"""Deployment: ONNX export, the accuracy-aware INT8 search over ONNX Runtime and OpenVINO, and latency measurement."""
