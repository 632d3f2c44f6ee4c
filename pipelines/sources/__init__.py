"""Input sources for ingest: radar composites, CF NetCDF files and a synthetic generator.

>>> source = get_source("synthetic", shape=(64, 64), n_frames=3)
>>> [item.path for item in source.items()]
['synthetic:0', 'synthetic:1', 'synthetic:2']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nowcast.pipelines.sources.base import Source, SourceError, SourceItem
from nowcast.pipelines.sources.netcdf import NetCDFSource
from nowcast.pipelines.sources.radar import FORMATS, RadarSource, detect_radar_format
from nowcast.pipelines.sources.synthetic import SyntheticSource

__all__ = ["FORMATS", "NetCDFSource", "RadarSource", "Source", "SourceError", "SourceItem",
           "SyntheticSource", "detect_radar_format", "get_source", "source_kinds"]


def _radar(fmt: str | None = None, **options: Any) -> RadarSource:
    """A radar source; without ``fmt`` the format is detected from the file names (ODIM: content)."""
    directory = options.pop("directory", None)
    if directory is None:
        raise SourceError("a radar source needs directory=<folder of radar files>")
    return RadarSource(directory=str(directory), fmt=fmt or detect_radar_format(str(directory)),
                       **options)


def _format(fmt: str) -> Callable[..., Source]:
    return lambda **options: RadarSource(fmt=fmt, **options)


_SOURCES: dict[str, tuple[Callable[..., Source], type]] = {
    "radar": (_radar, RadarSource),
    **{name: (_format(name), RadarSource) for name in FORMATS},
    "netcdf": (NetCDFSource, NetCDFSource),
    "synthetic": (SyntheticSource, SyntheticSource),
}


def source_kinds() -> list[str]:
    """The names :func:`get_source` accepts."""
    return sorted(_SOURCES)


def get_source(kind: str, **options: object) -> Source:
    """A source by name, pySTEPS ``get_method`` style.

    Args:
        kind: ``radar`` (format detected), a radar format (``knmi``, ``bom``,
            ``fmi``, ``mch``, ``odim``), ``netcdf`` or ``synthetic``.
        **options: the source's constructor arguments, e.g. ``directory=...``
            (radar: also ``product`` for BoM, ``quantity`` for ODIM, ``zr_a``/``zr_b``
            for reflectivity).

    Raises:
        SourceError: for an unknown kind or option, listing what is accepted.
    """
    key = str(kind).lower()
    if key not in _SOURCES:
        raise SourceError(f"unknown source kind {kind!r}; known kinds: {', '.join(source_kinds())}")
    factory, cls = _SOURCES[key]
    try:
        return factory(**options)
    except TypeError as error:
        accepted = [name for name in inspect.signature(cls).parameters if key == "radar" or name != "fmt"]
        raise SourceError(f"bad options for source {kind!r} ({error}); it accepts {accepted}") from error
