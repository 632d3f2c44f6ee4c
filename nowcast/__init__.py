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
