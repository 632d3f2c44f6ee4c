"""ODIM_H5 metadata read with h5py: what the radar source needs besides pysteps' importer.

ODIM_H5 (EUMETNET OPERA's HDF5 information model) is the format of the OPERA
composites and of most European services, and its file names differ by
service, so a file is told by its content (a root attribute ``Conventions``
starting with ``ODIM_H5``) and its frame time is read from its metadata.
:mod:`nowcast.pipelines.sources.radar` decodes the field with
``pysteps.io.importers.import_odim_hdf5``; this module reads, without decoding
the field, what that importer leaves out or gets wrong for a general ODIM file:

- the frame time: the nominal time of the root ``what/date`` + ``what/time``.
  Services name their files by it, and for rates it marks the end of the
  acquisition (RMI scans end 30-50 s before it). The dataset's
  ``startdate/starttime``..``enddate/endtime`` describe the acquisition and do
  not follow one convention: OPERA's 2018 ODYSSEY rate at 18:00 spans
  17:50-18:05, its NIMBUS rate at 01:00 spans 01:00-01:00;
- which quantities a file holds (``RATE``, ``DBZH``, quality ``QIND``, ...);
- the grid, from the header (pysteps' own corner computation, repeated here
  so that a grid check does not decode the field);
- the field itself, decoded as ODIM defines it (pysteps' reading takes a
  coding held by the dataset's ``what`` for none, and undetect for a value),
  and the file's own Z-R relation (``how/zr_a``, ``zr_b``) for the
  conversion to mm/h.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from nowcast.errors import InputError
from nowcast.pipelines.sources.base import SourceError
from nowcast.pipelines.stores.grid import crs_of

ODIM_SUFFIXES = (".h5", ".hdf", ".hdf5")
QUANTITIES = ("RATE", "DBZH")  # rain rate in mm/h; reflectivity in dBZ, converted with a Z-R relation
CARTESIAN_OBJECTS = ("COMP", "IMAGE")  # composites and single-radar images (PVOL/SCAN are polar)
MARSHALL_PALMER = (200.0, 1.6)  # Z = a R^b when neither the options nor the file give a relation
EARTH_RADIUS_M = 6_371_000.0  # within 1% of every Earth ellipsoid's axes


@dataclasses.dataclass(frozen=True)
class OdimHeader:
    """What listing a file needs: its frame time, ODIM object and quantities.

    Attributes:
        time: nominal time (root ``what/date`` + ``what/time``), ``datetime64[s]``.
        object: ODIM object, e.g. ``COMP``.
        quantities: the quantity of every data group, in file order; a quantity
            listed twice is held by two groups.
    """

    time: np.datetime64
    object: str
    quantities: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class OdimData:
    """The data group of one quantity: its Z-R relation and declared shape.

    Attributes:
        quantity: ``RATE`` or ``DBZH``.
        zr_a, zr_b: the file's ``how/zr_a``, ``how/zr_b`` (nearest of the data,
            dataset and root ``how`` groups), None where the file gives none.
        shape: ``(ysize, xsize)`` from the ``where`` groups, None where absent.
    """

    quantity: str
    zr_a: float | None
    zr_b: float | None
    shape: tuple[int, int] | None


def is_odim(path: str) -> bool:
    """Whether ``path`` is an HDF5 file whose root ``Conventions`` starts with ``ODIM_H5``.

    Any failure to open the file (not HDF5, truncated, unreadable) means no.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _text(f.attrs.get("Conventions", "")).startswith("ODIM_H5")
    except Exception:  # not HDF5 at all, or damaged: not a file this format can use
        return False


def read_header(path: str) -> OdimHeader:
    """The file's :class:`OdimHeader`, cached per path, modification time and size.

    The cache makes a second listing of a folder (``time_step`` after ``items``,
    a watcher's next poll) cost one ``stat`` per file instead of one HDF5 open.

    Raises:
        SourceError: naming the file, if it is not ODIM_H5, is damaged, or has
            no nominal time.
    """
    try:
        stat = os.stat(path)
    except OSError as error:
        raise SourceError(f"{path}: cannot be read ({error}); check that the file exists and is readable") \
            from error
    return _read_header(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2**17)
def _read_header(path: str, _mtime_ns: int, _size: int) -> OdimHeader:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            conventions = _text(f.attrs.get("Conventions", ""))
            if not conventions.startswith("ODIM_H5"):
                raise SourceError(
                    f"{path}: not an ODIM_H5 file (root attribute Conventions is "
                    f"{conventions or 'missing'!r}, expected 'ODIM_H5/V2_x'); move it out of the folder, "
                    "or read the folder as its own format (e.g. knmi for KNMI's HDF5 files)"
                )
            what = f["what"].attrs if "what" in f else {}
            time = _nominal_time(path, what)
            quantities = tuple(quantity for quantity, _ in _data_groups(f))
            return OdimHeader(time=time, object=_text(what.get("object", "")), quantities=quantities)
    except SourceError:
        raise
    except Exception as error:  # h5py's OSError/KeyError on a damaged file
        raise SourceError(
            f"{path}: cannot read its ODIM_H5 header ({type(error).__name__}: {error}); the file is "
            "corrupt, truncated or still being written: download it again, or delete it"
        ) from error


def choose_quantity(header: OdimHeader, path: str, requested: str | None) -> str:
    """The quantity to read from a file: ``requested``, else RATE if present, else DBZH.

    Raises:
        SourceError: naming the file, if it is not a cartesian product, lacks the
            quantity, or holds it in more than one data group (pysteps would
            silently read the last).
    """
    if header.object not in CARTESIAN_OBJECTS:
        raise SourceError(
            f"{path}: ODIM object {header.object or 'missing'!r} is not a cartesian composite or image "
            f"({', '.join(CARTESIAN_OBJECTS)}); polar volumes and scans must be composited onto a grid "
            "first (e.g. with wradlib or BALTRAD)"
        )
    held = [q for q in QUANTITIES if q in header.quantities]
    quantity = requested or (held[0] if held else None)
    if quantity is None or quantity not in header.quantities:
        found = sorted(set(header.quantities)) or "none"
        if requested and held:
            problem = f"no {requested} data"
            fix = f"give --quantity {held[0]} (quantity={held[0]!r} in Python), or none"
        else:
            problem = f"no {requested} data" if requested else "neither RATE nor DBZH data"
            fix = ("this source reads rain-rate (RATE, mm/h) or reflectivity (DBZH, dBZ) composites: "
                   "use such a product")
        raise SourceError(f"{path}: holds {problem} (its quantities: {found}); {fix}")
    count = header.quantities.count(quantity)
    if count > 1:
        raise SourceError(
            f"{path}: holds {count} data groups of quantity {quantity} (several times, levels or "
            "products in one file); split the file into one frame per file"
        )
    return quantity


def read_data(path: str, quantity: str) -> tuple[np.ndarray, OdimData]:
    """``quantity``'s field decoded, and its coding, Z-R relation and declared shape.

    The field is ``raw * gain + offset`` (float64, as pysteps' importer computes it), NaN where the raw
    value is ``nodata`` (outside coverage), and nothing detected where it is ``undetect``: -inf dBZ for
    DBZH (Z = 0; pysteps reads -30 dBZ, which is also a measurable value) and 0 mm/h for RATE (pysteps
    reads the group's offset). The coding is the data group's ``what`` over its dataset's, as ODIM lets
    a dataset's ``what`` hold what all its data groups share (pysteps reads the data group's alone and
    took such a file's raw counts for dBZ).

    Raises:
        SourceError: naming the file, if it holds no single group of ``quantity``.
    """
    import h5py

    with h5py.File(path, "r") as f:
        found = [(group, what) for q, (group, what) in _data_groups(f) if q == quantity]
        if len(found) != 1:
            raise SourceError(f"{path}: holds {len(found)} data groups of quantity {quantity}, "
                              "expected one; replace the file")
        group, what = found[0]
        zr = {key: _nearest(key, group, group.parent, f) for key in ("zr_a", "zr_b")}
        raw = group["data"][...]
        gain, offset = what.get("gain", 1.0), what.get("offset", 0.0)
        if not np.isfinite(np.asarray([gain, offset], dtype="float64")).all():  # was an all-NaN frame
            raise SourceError(f"{path}: the {quantity} data group's coding is gain {gain}, offset {offset}; "
                              "both must be numbers: replace the file")
        field = np.asarray(raw * gain + offset, dtype="float64")
        # pysteps' default: raw 0 is undetect
        field[_coded(raw, what.get("undetect", 0.0))] = -np.inf if quantity == "DBZH" else 0.0
        field[_coded(raw, what.get("nodata"))] = np.nan
        return field, OdimData(quantity=quantity, zr_a=zr["zr_a"], zr_b=zr["zr_b"], shape=_declared_shape(f))


def _coded(raw: np.ndarray, value: Any) -> np.ndarray:
    """Where ``raw`` holds the sentinel ``value`` (``nodata``, ``undetect``; None: nowhere), compared in the
    data's own type: ODIM stores the attribute as a double, and float32 data holding 9999.9 never equals
    the double 9999.9 (such a file's outside was ingested as 9999.9 mm/h and its dry pixels as NaN)."""
    if value is None:
        return np.zeros(raw.shape, dtype=bool)
    value = np.asarray(value).reshape(-1)[0]
    return raw == (value.astype(raw.dtype) if np.issubdtype(raw.dtype, np.floating) else value)


def geodata(path: str) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """pysteps' georeferencing metadata of a file, from the header only, and the declared shape.

    The same computation as ``import_odim_hdf5``: the corner longitudes and
    latitudes projected with ``projdef``; with all four corners, the outer
    envelope; pixel sizes from ``xscale``/``yscale`` (root, else dataset1).
    The extents are grid edges (ODIM's corners are those of the corner pixels).

    Raises:
        KeyError, OSError: on a header without ``where/projdef`` or corners.
    """
    import h5py
    import pyproj

    with h5py.File(path, "r") as f:
        where = f["where"].attrs
        projection = _text(where["projdef"])
        proj = pyproj.Proj(_crs(path, projection))
        ll_x, ll_y = proj(where["LL_lon"], where["LL_lat"])
        ur_x, ur_y = proj(where["UR_lon"], where["UR_lat"])
        if all(key in where for key in ("LR_lat", "LR_lon", "UL_lat", "UL_lon")):
            lr_x, lr_y = proj(float(where["LR_lon"]), float(where["LR_lat"]))
            ul_x, ul_y = proj(float(where["UL_lon"]), float(where["UL_lat"]))
            x1, y1, x2, y2 = min(ll_x, ul_x), min(ll_y, lr_y), max(lr_x, ur_x), max(ul_y, ur_y)
        else:
            x1, y1, x2, y2 = ll_x, ll_y, ur_x, ur_y
        scales = where if "xscale" in where and "yscale" in where else _dataset_where(f)
        metadata = {
            "projection": projection, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
            "xpixelsize": scales.get("xscale"), "ypixelsize": scales.get("yscale"),
            "cartesian_unit": _cartesian_unit(proj.crs), "yorigin": "upper",
        }
        return metadata, _declared_shape(f)


def _crs(path: str, projection: str) -> Any:
    try:
        return crs_of(projection)
    except InputError as error:
        raise SourceError(f"{path}: where/projdef: {error}") from error


def _cartesian_unit(crs: Any) -> str:
    """The unit the projection's coordinates come in: ``km`` for a PROJ string with ``+units=km`` or with
    the Earth's axes in km (KNMI's ``+a=6378.137``: the corners project to km, which the source rescales
    to metres), ``degrees`` for a longitude/latitude grid, else ``m``."""
    if crs.is_geographic:
        return "degrees"
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    axis = crs.ellipsoid.semi_major_metre if crs.ellipsoid is not None else EARTH_RADIUS_M
    in_km = np.isclose(factor, 1000.0) or np.isclose(axis * 1000.0, EARTH_RADIUS_M, rtol=0.01)
    return "km" if in_km else "m"


def _nominal_time(path: str, what: Mapping[str, Any]) -> np.datetime64:
    """Root ``what/date`` (YYYYMMDD) + ``what/time`` (HHMMSS) as ``datetime64[s]``."""
    date, time = _text(what.get("date", "")), _text(what.get("time", ""))
    try:
        numbers = [name for name in ("date", "time") if isinstance(_scalar(what.get(name, "")), np.number)]
        if numbers:  # time 1000 is 00:10:00, or 10:00 read as HHMM: no reading is safe
            raise ValueError(f"{' and '.join(numbers)} stored as numbers, not strings")
        if not re.fullmatch(r"\d{8}", date) or not re.fullmatch(r"\d{4}(\d{2})?", time):
            raise ValueError(f"date {date!r}, time {time!r}")
        stamp = datetime.strptime(date + time.ljust(6, "0"), "%Y%m%d%H%M%S")
    except ValueError as error:
        raise SourceError(
            f"{path}: no valid nominal time in the root what group ({error}; ODIM requires what/date "
            "YYYYMMDD and what/time HHMMSS); fix the file's metadata or move it out of the folder"
        ) from error
    return np.datetime64(stamp, "s")


def _data_groups(f: Any) -> Iterator[tuple[str, tuple[Any, Mapping[str, Any]]]]:
    """(quantity, (data group, its effective ``what`` attributes)) for every ``datasetN/dataM``.

    The effective attributes are the dataset's ``what`` with the data group's own over them (ODIM's
    lower levels override the higher); quantity ``QIND`` where neither names one. A data group with
    neither ``what`` is skipped.
    """
    for name, dataset in f.items():
        if not name.startswith("dataset") or not hasattr(dataset, "items"):
            continue
        dataset_what = dict(dataset["what"].attrs) if "what" in dataset else {}
        for data_name, group in dataset.items():
            if not data_name.startswith("data") or "data" not in group:
                continue
            if "what" not in group and "quantity" not in dataset_what:
                continue
            what = {**dataset_what, **(dict(group["what"].attrs) if "what" in group else {})}
            yield _text(what.get("quantity", "QIND")), (group, what)


def _nearest(key: str, *groups: Any) -> float | None:
    """``how/<key>`` of the first group (data, dataset, root) that has it."""
    for group in groups:
        if "how" in group and key in group["how"].attrs:
            return float(group["how"].attrs[key])
    return None


def _dataset_where(f: Any) -> Mapping[str, Any]:
    return f["dataset1/where"].attrs if "dataset1/where" in f else {}


def _declared_shape(f: Any) -> tuple[int, int] | None:
    """(ysize, xsize) from the root ``where``, else dataset1's (RMI keeps it there)."""
    for where in (f["where"].attrs if "where" in f else {}, _dataset_where(f)):
        if "xsize" in where and "ysize" in where:
            return int(where["ysize"]), int(where["xsize"])
    return None


def _scalar(value: object) -> object:
    """An HDF5 attribute of one element as that element (h5py returns some as 1-element arrays)."""
    return value.reshape(-1)[0] if isinstance(value, np.ndarray) and value.size == 1 else value


def _text(value: object) -> str:
    """An HDF5 string attribute (fixed-length bytes in most files) as ``str``."""
    value = _scalar(value)
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
