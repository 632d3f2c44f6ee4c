"""Radar files read with pysteps' importers, with the per-format fixes the source relies on.

One function per concern: :func:`import_radar` (pysteps' importer per format:
raw field with NaN for no data, and its metadata), :func:`import_odim` (ODIM,
decoded here), :func:`to_rain_rate` (pysteps' conversion to mm/h)
and the header-only grids of the formats whose importers would decode the
whole field for it. :mod:`nowcast.pipelines.sources.radar` decides which
files to read; this module only reads them.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nowcast.pipelines.sources import odim
from nowcast.pipelines.sources.base import SourceError, grid_from_cf
from nowcast.pipelines.stores.grid import Grid
from nowcast.quiet_import import pysteps_quietly

# Units of BoM's precipitation variable, as pysteps' to_rainrate units: amounts
# (over start_time..valid_time; all that pysteps' importer reads) and rates.
LENGTH_UNITS = {"m": 1.0, "metre": 1.0, "metres": 1.0, "meter": 1.0, "meters": 1.0, "km": 1000.0,
                "kilometre": 1000.0, "kilometres": 1000.0, "kilometer": 1000.0, "kilometers": 1000.0}
_BOM_UNITS = {"kg m-2": "mm", "mm": "mm", "mm h-1": "mm/h", "mm/h": "mm/h", "mm hr-1": "mm/h",
              "kg m-2 h-1": "mm/h"}


@functools.cache
def load_pysteps() -> tuple[Any, Any]:
    """pysteps' importers module and ``to_rainrate``, imported once (~2 s) without its banner."""
    with pysteps_quietly():
        from pysteps.io import importers
        from pysteps.utils import to_rainrate
    return importers, to_rainrate


def import_radar(fmt: str, path: str, quantity: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Reads one file with its pysteps importer: raw field (NaN = no data) and metadata.

    ``quantity`` picks an ODIM quantity (default: RATE if the file holds it, else DBZH).
    """
    importers, _ = load_pysteps()
    if fmt == "odim":
        field, metadata, _shape = import_odim(path, quantity)
        return field, metadata
    if fmt == "bom":
        fast = _import_bom_fast(path)
        if fast is not None:
            return fast
    calls: Mapping[str, Callable[[], tuple]] = {
        "knmi": lambda: importers.import_knmi_hdf5(path, accutime=float(_period_minutes("knmi", path))),
        "bom": lambda: importers.import_bom_rf3(path),
        "fmi": lambda: importers.import_fmi_pgm(path, gzipped=path.endswith(".gz")),
        "mch": lambda: importers.import_mch_gif(path, product="AQC", unit="mm",
                                                accutime=float(_period_minutes("mch", path))),
    }
    field, _quality, metadata = calls[fmt]()
    return np.ma.filled(np.ma.asarray(field, dtype="float64"), np.nan), dict(metadata)


# The accumulation period in the names of the formats that store amounts (mm) over a period: read as
# 5 minutes' amount, an hour's was 12 times the rate
_PERIODS = {
    "mch": (re.compile(r"AQC\d{9}[A-Z]_(\d{5})\.\d{3}\.gif"), "_00005 for 5 minutes",
            "AQC151351545F_00005.801.gif"),
    "knmi": (re.compile(r"RAD_NL\d+_[A-Z]+_(\d+)min_\d{12}\.h5"), "_5min_ for 5 minutes",
             "RAD_NL25_RAP_5min_201008260000.h5"),
}


def period_minutes(fmt: str, filename: str) -> int | None:
    """The accumulation period in a MeteoSwiss AQC (``_00005``: 5; ``_00060``: an hour) or KNMI
    (``_5min_``) file name, in minutes; None for other names or formats."""
    if fmt not in _PERIODS:
        return None
    match = _PERIODS[fmt][0].fullmatch(os.path.basename(filename))
    return int(match[1]) if match else None


def _period_minutes(fmt: str, path: str) -> int:
    """The accumulation period of a MeteoSwiss AQC or KNMI file, from its name."""
    minutes = period_minutes(fmt, path)
    if not minutes:
        _, code, example = _PERIODS[fmt]
        raise SourceError(f"{path}: the name gives no accumulation period ({code}); name the file as its "
                          f"service does, e.g. {example}")
    return minutes


def import_odim(path: str, quantity: str | None = None
                ) -> tuple[np.ndarray, dict[str, Any], tuple[int, int] | None]:
    """An ODIM file's field and pysteps-style metadata, ready for :func:`to_rain_rate`, and its shape.

    The field is decoded by :func:`odim.read_data` (undetect dry, nodata NaN), not by pysteps'
    ``import_odim_hdf5``, whose values it equals for a file that codes each data group in its own
    ``what``. ``to_rainrate`` zeroes every dB value below the metadata's ``threshold``, which pysteps
    sets to the frame's second-lowest value (the lowest reflectivity class would read as dry): it is
    -inf here. The Z-R relation is the file's ``how/zr_a``, ``how/zr_b``, else Marshall-Palmer (200,
    1.6); :class:`RadarSource` overrides it with its options.

    Raises:
        SourceError: naming the file, if it is not ODIM or lacks the quantity.
    """
    quantity = odim.choose_quantity(odim.read_header(path), path, quantity)
    field, data = odim.read_data(path, quantity)
    metadata, _shape = odim.geodata(path)
    reflectivity = quantity == "DBZH"
    metadata.update(unit="dBZ" if reflectivity else "mm/h", transform="dB" if reflectivity else None,
                    threshold=-np.inf, zerovalue=0.0)
    if reflectivity:
        zr_a, zr_b = odim.MARSHALL_PALMER
        metadata.update(zr_a=zr_a if data.zr_a is None else data.zr_a,
                        zr_b=zr_b if data.zr_b is None else data.zr_b)
    return field, metadata, data.shape


def _import_bom_fast(path: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A BoM Rainfields3 file as ``import_bom_rf3`` returns it, about 50 times faster.

    pysteps' importer spends ~0.5 s per file in Python ``min``/``max`` loops over
    the coordinate variables to build georeferencing that :func:`bom_grid` reads
    from the header anyway. The field is decoded by the same netCDF4 call, so
    the values are identical (tests compare every file). Returns None for files
    this shortcut does not cover, which then go through pysteps.

    Amounts (``kg m-2``, ``mm``, as pysteps reads them) are over
    ``start_time``..``valid_time``; rates (``mm h-1``), which pysteps' importer
    leaves without a unit, are read as mm/h.

    Raises:
        SourceError: naming the file, for a precipitation unit that is neither,
            or an amount without its accumulation period.
    """
    import netCDF4

    importers, _ = load_pysteps()
    with netCDF4.Dataset(path) as ds:
        names = ds.variables.keys()
        if "precipitation" not in names:
            return None
        units = str(getattr(ds["precipitation"], "units", ""))
        unit = _BOM_UNITS.get(units)
        if unit is None:
            raise SourceError(
                f"{path}: variable precipitation has units {units!r}; a BoM source reads amounts "
                f"({', '.join(u for u, v in _BOM_UNITS.items() if v == 'mm')}) and rates "
                f"({', '.join(u for u, v in _BOM_UNITS.items() if v == 'mm/h')}): use a precipitation product"
            )
        accutime = None
        if {"valid_time", "start_time"} <= names:
            start, valid = cf_time(ds["start_time"]), cf_time(ds["valid_time"])
            if start is None or valid is None:
                return None
            accutime = int((valid - start) // np.timedelta64(1, "m"))
            if accutime < 0:  # a negative rate everywhere: all rain read as unobserved, exit 0
                raise SourceError(f"{path}: start_time {start} is after valid_time {valid}, so its amounts "
                                  "have no accumulation period; replace the file")
        if unit == "mm" and not accutime:
            raise SourceError(
                f"{path}: precipitation is an amount ({units}) but the file has no accumulation period "
                "(valid_time after start_time), so it cannot be turned into a rate; check the product"
            )
        field = ds["precipitation"][:]
    field = np.ma.filled(np.ma.asarray(field, dtype="float64"), np.nan)
    metadata = {"unit": unit, "accutime": accutime, "transform": None,
                "zerovalue": np.nanmin(field), "threshold": importers._get_threshold_value(field),
                "institution": "Commonwealth of Australia, Bureau of Meteorology"}
    return field, metadata


def cf_time(variable: Any) -> np.datetime64 | None:
    """The first value of a NetCDF time variable in UTC, to the second, from its CF ``units`` (any
    ``<unit> since <date>``); None for a variable without such units."""
    import cftime

    units = str(getattr(variable, "units", ""))
    if " since " not in units:
        return None
    try:
        value = float(np.asarray(variable[...], dtype="float64").ravel()[0])
        when = cftime.num2pydate(value, units, calendar=getattr(variable, "calendar", "standard"))
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return np.datetime64(when.replace(tzinfo=None, microsecond=0), "s")


def to_rain_rate(field: np.ndarray, metadata: Mapping[str, Any]) -> np.ndarray:
    """pysteps' ``to_rainrate`` (mm, dBZ, ... to mm/h) as float32, negative rates as NaN.

    A negative rate is a flag, not an amount: BoM files hold a few pixels of raw
    -2 (-0.1 mm) beside their -1 fill value. Left in, they would break the
    archive's ``valid_min=0`` and make ingest refuse the whole frame.
    """
    _, to_rainrate = load_pysteps()
    rate, _ = to_rainrate(field, dict(metadata))
    rate = np.asarray(rate, dtype="float32")
    rate[rate < 0] = np.nan
    return rate


def shape_from_extent(metadata: Mapping[str, Any]) -> tuple[int, int]:
    """Grid shape implied by pysteps' edge extents and pixel sizes."""
    nx = round((float(metadata["x2"]) - float(metadata["x1"])) / float(metadata["xpixelsize"]))
    ny = round((float(metadata["y2"]) - float(metadata["y1"])) / float(metadata["ypixelsize"]))
    return ny, nx


def in_metres(metadata: Mapping[str, Any]) -> dict[str, Any]:
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


def bom_grid(path: str) -> Grid:
    """BoM grid from the NetCDF header: its pixel-centre coordinates and CF grid mapping.

    pysteps' BoM metadata gives the first and last pixel *centres* as ``x1``/``x2``
    (other importers give edges), so ``Grid.from_pysteps_metadata`` would be off by
    up to half a pixel; the header's own coordinates are exact.
    """
    import netCDF4
    with netCDF4.Dataset(path) as ds:
        unit = str(getattr(ds["x"], "units", "m"))
        scale = LENGTH_UNITS.get(unit.strip().lower())
        if scale is None:
            raise SourceError(f"{path}: coordinate x has units {unit!r}; a BoM grid is in metres or km "
                              f"({', '.join(LENGTH_UNITS)}): check the product")
        x = np.asarray(ds["x"][:], "float64") * scale
        y = np.asarray(ds["y"][:], "float64") * scale
        mapping = {k: ds["proj"].getncattr(k) for k in ds["proj"].ncattrs()}
    return grid_from_cf(y, x, mapping, units="m")


def header_metadata(fmt: str, path: str) -> dict[str, Any]:
    """pysteps geodata of a FMI or MeteoSwiss file without decoding the image."""
    importers, _ = load_pysteps()
    if fmt == "fmi":
        header = importers._import_fmi_pgm_metadata(path, gzipped=path.endswith(".gz"))
        return importers._import_fmi_pgm_geodata(header)
    return importers._import_mch_geodata()  # a fixed domain: the GIF has no georeferencing
