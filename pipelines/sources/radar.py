"""Radar composites read with pysteps' importers: KNMI, BoM, FMI and MeteoSwiss.

Frames are listed from file names (the timestamp is in every name), read with
the matching ``pysteps.io.importers`` function and converted with
``pysteps.utils.to_rainrate`` to a rain rate in mm/h, the archive's
precipitation unit. No-data pixels (outside radar range) stay NaN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from nowcast.pipelines.sources.base import (
    SourceError,
    SourceItem,
    check_frame_shape,
    grid_from_cf,
    list_files,
    sorted_unique,
)
from nowcast.pipelines.stores.archive import PRECIP, FieldSpec
from nowcast.pipelines.stores.grid import Grid


@dataclasses.dataclass(frozen=True)
class RadarFormat:
    """How one radar format is named, timed and read.

    Attributes:
        name: format key, e.g. ``knmi``.
        description: service and product, for messages and docs.
        suffixes: file-name endings that belong to the format (others are ignored).
        pattern: regular expression over the file name; its groups build the time.
        time_format: ``strptime`` format of the concatenated groups.
        example: an example file name, for messages.
        step_minutes: native time step.
    """

    name: str
    description: str
    suffixes: tuple[str, ...]
    pattern: str
    time_format: str
    example: str
    step_minutes: int

    def parse_time(self, filename: str) -> np.datetime64 | None:
        """The frame time in a file name, or None if the name does not follow the format."""
        match = re.fullmatch(self.pattern, filename)
        if not match:
            return None
        try:
            stamp = datetime.strptime("".join(match.groups()), self.time_format)
        except ValueError:
            return None
        return np.datetime64(stamp, "s")


FORMATS: dict[str, RadarFormat] = {
    fmt.name: fmt
    for fmt in (
        RadarFormat("knmi", "KNMI RAD_NL25 5-min accumulation (HDF5, mm)", (".h5",),
                    r"RAD_NL\d+_[A-Z]+_\d+min_(\d{12})\.h5", "%Y%m%d%H%M",
                    "RAD_NL25_RAP_5min_201008260000.h5", 5),
        RadarFormat("bom", "BoM Rainfields3 10-min accumulation (NetCDF, mm)", (".nc",),
                    r"\d+_(\d{8})_(\d{6})\.prcp-c10\.nc", "%Y%m%d%H%M%S",
                    "66_20201031_000000.prcp-c10.nc", 10),
        RadarFormat("fmi", "FMI composite reflectivity (gzipped PGM, dBZ)", (".pgm.gz", ".pgm"),
                    r"(\d{12})_fmi\.radar\.composite\.lowest_FIN_SUOMI1\.pgm(?:\.gz)?", "%Y%m%d%H%M",
                    "201609281445_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", 5),
        RadarFormat("mch", "MeteoSwiss AQC 5-min accumulation (GIF, mm)", (".gif",),
                    r"AQC(\d{2})(\d{3})(\d{4})[A-Z]_\d{5}\.\d{3}\.gif", "%y%j%H%M",
                    "AQC151351545F_00005.801.gif", 5),
    )
}


def detect_radar_format(directory: str) -> str:
    """The radar format of the files under ``directory``, from their names.

    Raises:
        SourceError: if no file follows a supported format, or files of several
            formats are mixed (point at one format's folder instead).
    """
    counts = {name: 0 for name in FORMATS}
    for path in list_files(directory, tuple(s for fmt in FORMATS.values() for s in fmt.suffixes)):
        for name, fmt in FORMATS.items():
            if fmt.parse_time(os.path.basename(path)) is not None:
                counts[name] += 1
    present = [name for name, count in counts.items() if count]
    if len(present) == 1:
        return present[0]
    if not present:
        raise SourceError(
            f"no radar file of a supported format under {directory!r}; supported formats: "
            + ", ".join(f"{fmt.name} (e.g. {fmt.example})" for fmt in FORMATS.values())
        )
    raise SourceError(
        f"{directory!r} mixes radar formats {present} ({', '.join(f'{counts[n]} {n}' for n in present)}); "
        "give the folder of one format"
    )


_IMPORT_LOCK = threading.Lock()


@functools.cache
def _pysteps() -> tuple[Any, Any]:
    """pysteps' importers module and ``to_rainrate``, imported once (~2 s) without its banner.

    Only the import is silenced (pysteps prints where it found its configuration
    file): swapping ``sys.stdout`` or the warning filters around every read
    would not be thread-safe under multi-threaded Beam workers.
    """
    with _IMPORT_LOCK, contextlib.redirect_stdout(io.StringIO()):
        from pysteps.io import importers
        from pysteps.utils import to_rainrate
    return importers, to_rainrate


def import_radar(fmt: str, path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Reads one file with its pysteps importer: raw field (NaN = no data) and metadata."""
    importers, _ = _pysteps()
    if fmt == "bom":
        fast = _import_bom_fast(path)
        if fast is not None:
            return fast
    calls: Mapping[str, Callable[[], tuple]] = {
        "knmi": lambda: importers.import_knmi_hdf5(path),
        "bom": lambda: importers.import_bom_rf3(path),
        "fmi": lambda: importers.import_fmi_pgm(path, gzipped=path.endswith(".gz")),
        "mch": lambda: importers.import_mch_gif(path, product="AQC", unit="mm", accutime=5.0),
    }
    field, _quality, metadata = calls[fmt]()
    return np.ma.filled(np.ma.asarray(field, dtype="float64"), np.nan), dict(metadata)


def _import_bom_fast(path: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A BoM Rainfields3 file as ``import_bom_rf3`` returns it, about 50 times faster.

    pysteps' importer spends ~0.5 s per file in Python ``min``/``max`` loops over
    the coordinate variables to build georeferencing that :func:`_bom_grid` reads
    from the header anyway. The field is decoded by the same netCDF4 call, so
    the values are identical (tests compare every file). Returns None for files
    this shortcut does not cover, which then go through pysteps.
    """
    import netCDF4

    importers, _ = _pysteps()
    with netCDF4.Dataset(path) as ds:
        names = ds.variables.keys()
        if not {"precipitation", "valid_time", "start_time"} <= names:
            return None
        units = {getattr(ds[v], "units", "") for v in ("valid_time", "start_time")}
        if len(units) != 1 or not units.pop().startswith("seconds since"):
            return None
        if getattr(ds["precipitation"], "units", "") not in ("kg m-2", "mm"):
            return None
        accutime = (int(ds["valid_time"][...]) - int(ds["start_time"][...])) // 60
        field = ds["precipitation"][:]
    field = np.ma.filled(np.ma.asarray(field, dtype="float64"), np.nan)
    metadata = {"unit": "mm", "accutime": accutime, "transform": None,
                "zerovalue": np.nanmin(field), "threshold": importers._get_threshold_value(field),
                "institution": "Commonwealth of Australia, Bureau of Meteorology"}
    return field, metadata


def to_rain_rate(field: np.ndarray, metadata: Mapping[str, Any]) -> np.ndarray:
    """pysteps' ``to_rainrate`` (mm, dBZ, ... to mm/h) as float32, negative rates as NaN.

    A negative rate is a flag, not an amount: BoM files hold a few pixels of raw
    -2 (-0.1 mm) beside their -1 fill value. Left in, they would break the
    archive's ``valid_min=0`` and make ingest refuse the whole frame.
    """
    _, to_rainrate = _pysteps()
    rate, _ = to_rainrate(field, dict(metadata))
    rate = np.asarray(rate, dtype="float32")
    rate[rate < 0] = np.nan
    return rate


def _shape_from_extent(metadata: Mapping[str, Any]) -> tuple[int, int]:
    """Grid shape implied by pysteps' edge extents and pixel sizes."""
    nx = round((float(metadata["x2"]) - float(metadata["x1"])) / float(metadata["xpixelsize"]))
    ny = round((float(metadata["y2"]) - float(metadata["y1"])) / float(metadata["ypixelsize"]))
    return ny, nx


def _in_metres(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata with km coordinates rescaled to metres.

    KNMI describes its grid in km with the ellipsoid axes in km too
    (``+a=6378.137``), which PROJ treats as another planet: no transformation to
    longitude/latitude exists. Scaling the coordinates, axes and false origin by
    1000 gives the same projection in metres on the Earth.
    """
    metadata = dict(metadata)
    if metadata.get("cartesian_unit") != "km":
        return metadata
    for key in ("x1", "x2", "y1", "y2", "xpixelsize", "ypixelsize"):
        metadata[key] = float(metadata[key]) * 1000.0
    projection = str(metadata["projection"])
    if re.search(r"\+units=km", projection):
        projection = projection.replace("+units=km", "+units=m")
    else:
        projection = re.sub(r"\+(a|b|x_0|y_0)=([-+\d.eE]+)",
                            lambda m: f"+{m[1]}={float(m[2]) * 1000.0:.12g}", projection)
    metadata["projection"] = projection
    metadata["cartesian_unit"] = "m"
    return metadata


def _bom_grid(path: str) -> Grid:
    """BoM grid from the NetCDF header: its pixel-centre coordinates and CF grid mapping.

    pysteps' BoM metadata gives the first and last pixel *centres* as ``x1``/``x2``
    (other importers give edges), so ``Grid.from_pysteps_metadata`` would be off by
    up to half a pixel; the header's own coordinates are exact.
    """
    import netCDF4
    with netCDF4.Dataset(path) as ds:
        scale = {"km": 1000.0, "m": 1.0}[getattr(ds["x"], "units", "m")]
        x = np.asarray(ds["x"][:], "float64") * scale
        y = np.asarray(ds["y"][:], "float64") * scale
        mapping = {k: ds["proj"].getncattr(k) for k in ds["proj"].ncattrs()}
    return grid_from_cf(y, x, mapping, units="m")


def _header_metadata(fmt: str, path: str) -> dict[str, Any]:
    """pysteps geodata of a FMI or MeteoSwiss file without decoding the image."""
    importers, _ = _pysteps()
    if fmt == "fmi":
        header = importers._import_fmi_pgm_metadata(path, gzipped=path.endswith(".gz"))
        return importers._import_fmi_pgm_geodata(header)
    return importers._import_mch_geodata()  # a fixed domain: the GIF has no georeferencing


@dataclasses.dataclass(frozen=True)
class RadarSource:
    """Radar composite files of one format under a folder.

    Attributes:
        directory: folder searched recursively for the format's files.
        fmt: one of :data:`FORMATS` (``knmi``, ``bom``, ``fmi``, ``mch``).
    """

    directory: str
    fmt: str

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise SourceError(f"unknown radar format {self.fmt!r}; supported formats: {sorted(FORMATS)}")
        object.__setattr__(self, "directory", os.fspath(self.directory))

    @property
    def name(self) -> str:
        return self.fmt

    @property
    def format(self) -> RadarFormat:
        return FORMATS[self.fmt]

    def fields(self) -> tuple[FieldSpec, ...]:
        return (PRECIP,)

    def time_step(self) -> np.timedelta64:
        return np.timedelta64(timedelta(minutes=self.format.step_minutes), "s")

    def items(self) -> list[SourceItem]:
        """Every file of the format, by time parsed from its name.

        Raises:
            SourceError: on a missing or empty folder, a name without a parsable
                time, or two files at the same time.
        """
        fmt = self.format
        paths = list_files(self.directory, fmt.suffixes)
        if not paths:
            raise SourceError(
                f"no {fmt.name} files ({' or '.join(fmt.suffixes)}, e.g. {fmt.example}) under "
                f"{self.directory!r}; check the folder and the format (detected: "
                f"{_try_detect(self.directory)})"
            )
        items = []
        for path in paths:
            time = fmt.parse_time(os.path.basename(path))
            if time is None:
                raise SourceError(
                    f"{path}: cannot read a time from the name; {fmt.name} files are named like "
                    f"{fmt.example}: rename the file or move it out of {self.directory!r}"
                )
            items.append(SourceItem(time=time, path=path))
        return sorted_unique(items)

    def read_grid(self, item: SourceItem) -> Grid:
        """The file's grid (BoM, FMI: header only; MeteoSwiss: the fixed CCS4 domain)."""
        try:
            if self.fmt == "bom":
                return _bom_grid(item.path)
            if self.fmt in ("fmi", "mch"):
                metadata = _header_metadata(self.fmt, item.path)
                shape = _shape_from_extent(metadata)
            else:  # KNMI: the importer reads the whole (small) file anyway
                field, metadata = import_radar(self.fmt, item.path)
                shape = field.shape
            return Grid.from_pysteps_metadata(_in_metres(metadata), shape)
        except Exception as error:  # any reader failure means a bad file
            raise _unreadable(self.fmt, item.path, error) from error

    def read(self, item: SourceItem) -> dict[str, np.ndarray]:
        """The frame as a rain rate in mm/h (float32, NaN outside radar coverage).

        Raises:
            SourceError: if the file is corrupt, truncated or not of this format.
        """
        try:
            field, metadata = import_radar(self.fmt, item.path)
            rate = to_rain_rate(field, metadata)
        except Exception as error:  # any reader failure means a bad file
            raise _unreadable(self.fmt, item.path, error) from error
        expected = None if self.fmt == "bom" else _shape_from_extent(metadata)
        return {PRECIP.name: check_frame_shape(item, PRECIP.name, rate, expected)}


def _unreadable(fmt: str, path: str, error: Exception) -> SourceError:
    return SourceError(
        f"{path}: cannot read it as a {FORMATS[fmt].description} file "
        f"({type(error).__name__}: {error}); the file is corrupt, truncated or of another format: "
        "download it again, or delete it to ingest that frame as missing"
    )


def _try_detect(directory: str) -> str:
    try:
        return detect_radar_format(directory)
    except SourceError:
        return "none"
