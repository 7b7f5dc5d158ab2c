"""The trained model served: ONNX export behind the parity gate (onnx_export.py, torch), ONNX
Runtime sessions (onnx_runtime.py) and batch prediction (predict.py), which need no torch."""
