"""Catalogs: the survey batches waiting under ``incoming/``, the catalog schema, the write-once
parts and manifest of each batch's catalog, and exports. Tables only: nothing here imports torch."""
