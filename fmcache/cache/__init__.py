"""The Zarr cache: layout, writer (resumable), reader, provenance."""
