"""Data pipelines over Zarr stores, in layers (docs/architecture.md).

- :mod:`nowcast.pipelines.stores`: schemas and stores (archive, windows, forecasts), grids, time axes.
- :mod:`nowcast.pipelines.sources`: input readers (radar composites, CF NetCDF, synthetic).
- :mod:`nowcast.pipelines.plans`: pure planning of ingest, windows and scoring.
- :mod:`nowcast.pipelines.jobs`: the Beam jobs and their runners.

Nothing is imported here, so importing a store module never loads Beam.
"""
