"""Batch prediction jobs (``sluice batch``): a whole file through a model, resumably.

sources (Parquet, CSV, .npy in numbered chunks) -> columns (which columns feed which input;
rejected rows) -> job (predict, overlap reading and writing) -> parts (part files, the manifest,
assembly). The model answers through ``local`` (this process, the server's backends) or
``remote`` (a running server over ModelStreamInfer).
"""
