"""The decision graphs: the ONNX profile, static shape and cost bounds, and the NumPy evaluator."""
