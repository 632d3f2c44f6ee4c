"""nowcast: gridded precipitation and sensor nowcasting.

Beam pipelines over Zarr stores (:mod:`nowcast.pipelines`), Keras forecasters
(:mod:`nowcast.model`) and the Prefect flows and command line that run them
(:mod:`nowcast.flows`). docs/architecture.md draws the layers.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("nowcast")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"


def open_forecasts(url: str, *, written_only: bool = True):
    """forecasts.zarr as a lazy xarray Dataset, for analysis and plots.

    By default only the init times a scoring run has written (the others are
    NaN placeholders, ``written`` false). Each forecast has ``valid_time``
    (init_time + lead_time) and 2-D ``latitude``/``longitude``, and the grid
    mapping ``crs`` as a coordinate, so a forecast lines up with the archive on
    ``valid_time`` and plots on latitude/longitude::

        import nowcast
        ds = nowcast.open_forecasts("runs/demo/forecasts.zarr")
        rain = ds.precip.isel(init_time=-1)
        rain.plot(x="longitude", y="latitude", col="lead_time")

    Raises:
        nowcast.pipelines.stores.forecasts.ForecastStoreError: not a forecast store.
    """
    import numpy as np

    from nowcast.pipelines.stores.forecasts import WRITTEN
    from nowcast.pipelines.stores.forecasts import open_forecasts as open_store

    ds = open_store(url)
    return ds.isel(init_time=np.flatnonzero(ds[WRITTEN].values)) if written_only else ds
