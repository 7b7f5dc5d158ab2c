"""Raw images and labels -> the Parquet splits (preprocess.py), and that format (store.py).
Imports no torch: preprocess starts fast, and predict decodes images without it."""
