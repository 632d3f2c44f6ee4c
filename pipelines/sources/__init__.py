"""Input sources for ingest: radar composites, CF NetCDF files and a synthetic generator.

>>> source = get_source("synthetic", shape=(64, 64), n_frames=3)
>>> [item.path for item in source.items()]
['synthetic:0', 'synthetic:1', 'synthetic:2']
"""

from __future__ import annotations

import glob
import inspect
import os
from collections.abc import Callable
from typing import Any

from nowcast.pipelines.sources.base import (
    Source,
    SourceError,
    SourceItem,
    has_suffix,
    list_files,
    not_a_local_folder,
)
from nowcast.pipelines.sources.netcdf import SUFFIXES as NETCDF_SUFFIXES
from nowcast.pipelines.sources.netcdf import NetCDFSource
from nowcast.pipelines.sources.radar import FORMATS, NoRadarFilesError, RadarSource, detect_radar_format, flag
from nowcast.pipelines.sources.synthetic import SyntheticSource
from nowcast.pipelines.stores.groups import local_path

__all__ = ["FORMATS", "NetCDFSource", "RadarSource", "Source", "SourceError", "SourceItem",
           "SyntheticSource", "detect_format", "detect_radar_format", "folder_source", "get_source",
           "other_inputs", "source_kinds"]


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


def detect_format(directory: str) -> str:
    """The input format under ``directory``: a radar format (:func:`detect_radar_format`), or ``netcdf``
    for CF NetCDF files that no radar format claims.

    Raises:
        SourceError: if neither is there, or radar formats are mixed.
    """
    if not_a_local_folder(directory):  # a file or a pattern
        named = local_path(directory)
        files = glob.glob(named) if glob.has_magic(named) else [named] if os.path.isfile(named) else []
        if files and all(has_suffix(name, NETCDF_SUFFIXES) for name in files):
            return "netcdf"  # the one source that reads a file or a pattern
    try:
        return detect_radar_format(directory)
    except NoRadarFilesError as error:
        if list_files(directory, NETCDF_SUFFIXES):
            return "netcdf"
        raise NoRadarFilesError(f"{error}; or CF NetCDF files ({', '.join(NETCDF_SUFFIXES)})") from None


def folder_source(directory: str, fmt: str = "auto", variables: Any = None, **radar: Any) -> Source:
    """The source for a folder (or object-store prefix) of input files; ``fmt`` auto: :func:`detect_format`.

    ``variables`` selects NetCDF variables (None: every gridded one); ``radar`` are a radar source's
    options (``product``, ``quantity``, ``zr_a``, ``zr_b``), refused for NetCDF files.
    """
    fmt = detect_format(directory) if fmt == "auto" else fmt
    if fmt == "netcdf":
        if radar:
            given = " and ".join(flag(name) for name in sorted(radar))
            raise SourceError(f"{given} ({', '.join(sorted(radar))} in Python) applies to radar files; "
                              f"{directory} holds CF NetCDF files: drop it")
        chosen = {} if variables is None else {"variables": variables}
        return get_source("netcdf", paths=directory, **chosen)
    return get_source(fmt, directory=directory, **radar)



def other_inputs(source: Source, directory: str) -> list[str]:
    """Input files under ``directory`` that ``source`` does not read: files another format would (radar
    or NetCDF by their suffixes), e.g. MeteoSwiss GIFs in a folder ingested as ``knmi``. A named format
    reads its own files only; the caller says so, rather than skip the others without a word. Sidecar
    files (README, checksums) do not count."""
    files = getattr(source, "files", None)
    if files is None or not_a_local_folder(directory):
        return []  # no source, or a file or pattern (the NetCDF source's): nothing else beside them
    suffixes = tuple({*NETCDF_SUFFIXES, *(suffix for fmt in FORMATS.values() for suffix in fmt.suffixes)})
    read = set(files())
    return [path for path in list_files(directory, suffixes) if path not in read]
