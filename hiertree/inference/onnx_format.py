"""What hiertree's ONNX graphs are, as facts both sides read without PyTorch: the exporter
(:mod:`hiertree.inference.onnx_graph`) writes them, and the predict cache (:mod:`hiertree.inference.backends`) keys
its files by them before deciding whether PyTorch is needed at all."""

__all__ = ["OPSET"]

#: The ONNX opset hiertree writes (hiertree-export's default, the predict cache's graphs, its cache key).
OPSET = 17
