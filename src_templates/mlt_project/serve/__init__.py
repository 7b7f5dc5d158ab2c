"""The trained model served: ONNX export behind the parity gate (onnx_export.py, torch), ONNX
Runtime sessions (onnx_runtime.py), batch prediction (predict.py), the HTTP server (server.py,
run by `python -m mlt_project.serve`: __main__.py) and a release fetched from the object store
with its checksums checked (fetch.py). All but the export need no torch: requirements-serve.txt
is enough."""
