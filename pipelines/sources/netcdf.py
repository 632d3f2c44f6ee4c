"""Generic CF NetCDF files: one or more gridded variables over ``time``, ``y``, ``x``.

For sensor fields (temperature, humidity, ...) or any gridded product that is
already in CF NetCDF. Each file holds one or many times; every selected
variable becomes an archive field whose units and names come from the file's
attributes, so nothing is converted: the archive holds what the file holds.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyproj
import xarray as xr

from nowcast.errors import InputError
from nowcast.pipelines.sources.base import (
    SourceError,
    SourceItem,
    check_frame_shape,
    grid_from_cf,
    list_files,
    local_file,
    most_common_step,
    sorted_unique,
)
from nowcast.pipelines.stores.archive import FieldSpec, same_units
from nowcast.pipelines.stores.grid import Grid
from nowcast.pipelines.stores.groups import is_local

log = logging.getLogger(__name__)

SUFFIXES = (".nc", ".nc4", ".netcdf")
# the (y, x) dimension names of a grid: projected, or latitude and longitude (CF needs no grid-mapping
# variable for those: they are read as WGS84 longitude/latitude in degrees)
LONLAT_DIMS = (("lat", "lon"), ("latitude", "longitude"))
GRID_DIMS = (("y", "x"), ("projection_y_coordinate", "projection_x_coordinate"), *LONLAT_DIMS)
LONLAT = {"grid_mapping_name": "latitude_longitude"}


@contextmanager
def _open(path: str) -> Iterator[xr.Dataset]:
    """Opens a file lazily (headers only until data is indexed)."""
    with local_file(path) as local:
        try:
            _check_classic_whole(local)
            ds = xr.open_dataset(local, engine="netcdf4", cache=False)
        except Exception as error:  # any open failure means a bad file
            raise SourceError(
                f"{path}: cannot open it as NetCDF ({type(error).__name__}: {error}); if the file is "
                "corrupt or truncated, write it again or remove it to ingest its frames as missing; if "
                "the error names an attribute (e.g. time units), fix that attribute"
            ) from error
        try:
            yield ds
        finally:
            ds.close()


def _check_classic_whole(path: str) -> None:
    """Raises ValueError for a NetCDF3 (classic or 64-bit offset) file shorter than its header says.

    netCDF-C reads the missing end of such a file as zeros: a truncated file was ingested as 0 mm/h,
    flagged valid (HDF5-based NetCDF4 files fail to open instead). scipy's reader maps the variables from
    the header's offsets and sizes, and fails on a file too short for them.
    """
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:3] != b"CDF" or magic[3:] not in (b"\x01", b"\x02"):  # not classic, or CDF-5 (scipy reads
        return                                                      # neither; netCDF-C checks CDF-5)
    import scipy.io

    try:
        with warnings.catch_warnings():  # "cannot close ... arrays referring to its data still exist"
            warnings.simplefilter("ignore", RuntimeWarning)
            with scipy.io.netcdf_file(path, "r", mmap=True) as classic:
                for variable in classic.variables.values():
                    variable.data.shape  # noqa: B018 - building the array is the check
    except (ValueError, TypeError) as error:
        raise ValueError(f"the file is shorter than its NetCDF3 header says: truncated ({error})") from error


def _grid_dims(dims: tuple) -> tuple[str, str] | None:
    """The (y, x) dimensions of a field over ``dims``, (time, y, x) in any order; None for other dims."""
    if "time" not in dims or len(dims) != 3:
        return None
    return next(((y, x) for y, x in GRID_DIMS if y in dims and x in dims), None)


DIMS_WANTED = ("expected (time, y, x), with y/x named " +
               ", ".join(f"{y}/{x}" for y, x in GRID_DIMS) + ": rename, squeeze or select the others first "
               "(e.g. ds.isel(level=0))")


def _spatial_dims(ds: xr.Dataset, name: str, path: str) -> tuple[str, str]:
    found = _grid_dims(ds[name].dims)
    if found is None:
        raise SourceError(f"{path}: variable {name!r} has dims {ds[name].dims}; {DIMS_WANTED}")
    return found


@dataclasses.dataclass(frozen=True)
class NetCDFSource:
    """CF NetCDF files holding gridded variables over (time, y, x).

    Attributes:
        paths: a folder (searched recursively for ``*.nc``), a glob pattern, one
            file, or a tuple of files.
        variables: variables to ingest, in order; None takes every
            (time, y, x) variable of the first file.
    """

    paths: str | tuple[str, ...]
    variables: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.paths, os.PathLike):
            object.__setattr__(self, "paths", os.fspath(self.paths))
        elif not isinstance(self.paths, str):
            object.__setattr__(self, "paths", tuple(os.fspath(p) for p in self.paths))
        if self.variables is not None:
            if isinstance(self.variables, str):
                object.__setattr__(self, "variables", (self.variables,))
            object.__setattr__(self, "variables", tuple(self.variables))
            if not self.variables:
                raise SourceError("variables=() selects nothing; give variable names or None for all")

    @property
    def name(self) -> str:
        return "netcdf"

    def files(self) -> list[str]:
        """The input files, in name order.

        Raises:
            SourceError: if nothing matches.
        """
        if isinstance(self.paths, tuple):
            files = sorted(self.paths)
        elif not is_local(self.paths) or os.path.isdir(self.paths):
            files = list_files(self.paths, SUFFIXES)
        elif glob.has_magic(self.paths):
            files = sorted(p for p in glob.glob(self.paths, recursive=True) if os.path.isfile(p))
        else:
            files = [self.paths] if os.path.isfile(self.paths) else []
        if not files:
            raise SourceError(
                f"no NetCDF files found at {self.paths!r}; give a folder holding *.nc files, a glob "
                "such as 'data/*.nc', or a list of files"
            )
        return [path if not is_local(path) else os.path.abspath(path) for path in files]

    def _variables(self, ds: xr.Dataset, path: str) -> tuple[str, ...]:
        """The selected variables, checked to be in ``ds``; None selects the first file's."""
        wanted = self.variables if self.variables is not None else _first_file_variables(self)
        missing = [v for v in wanted if v not in ds.data_vars]
        if missing:
            raise SourceError(
                f"{path}: variables {missing} not found (present: {list(ds.data_vars)}); "
                "fix the variables option"
            )
        return wanted

    def fields(self) -> tuple[FieldSpec, ...]:
        """FieldSpecs from the first file's attributes (units are required).

        Raises:
            SourceError: if a variable has no ``units`` attribute.
        """
        path = self.files()[0]
        with _open(path) as ds:
            specs = []
            for name in self._variables(ds, path):
                attrs = ds[name].attrs
                if not str(attrs.get("units", "")).strip():
                    raise SourceError(
                        f"{path}: variable {name!r} has no 'units' attribute; set it in the file "
                        f"(e.g. ds[{name!r}].attrs['units'] = 'K') so the archive records what it holds"
                    )
                low, high = _valid_range(ds[name], path)
                specs.append(FieldSpec(
                    name=name,
                    units=str(attrs["units"]),
                    long_name=str(attrs.get("long_name", name)),
                    standard_name=attrs.get("standard_name"),
                    valid_min=low,
                    valid_max=high,
                ))
            _spatial_dims(ds, specs[0].name, path)
        return tuple(specs)

    def items(self) -> list[SourceItem]:
        """One item per time of every file, from the ``time`` coordinates only.

        Raises:
            SourceError: for files without a ``time`` coordinate, duplicate times, or a variable
                whose units differ between files (a batch must agree within itself, not only with
                the archive).
        """
        units: dict[str, tuple[str, str]] = {}  # variable -> (units, first file saying so)
        return sorted_unique(item for path in self.files() for item in self.file_items(path, units))

    def file_step(self, path: str) -> None:
        """None: a NetCDF file's name states no step (its times are inside)."""
        return None

    def file_items(self, path: str, units: dict[str, tuple[str, str]] | None = None) -> list[SourceItem]:
        """The frames of one file, from its ``time`` coordinate (a watcher lists file by file).

        Args:
            path: one of :meth:`files`.
            units: per variable, the units and the file that first gave them; filled and checked
                across the calls that share it.

        Raises:
            SourceError: naming the file, when it has no decodable time or its units disagree.
        """
        with _open(path) as ds:
            _check_units(ds, self._variables(ds, path), path, {} if units is None else units)
            calendar = ds["time"].encoding.get("calendar") if "time" in ds.coords else None
            if "time" in ds.coords and ds["time"].dtype == object and str(calendar).lower() not in (
                    "standard", "gregorian", "proleptic_gregorian", "none"):  # cftime dates
                raise SourceError(
                    f"{path}: 'time' is on the {calendar!r} calendar (a climate model's), and nowcast's "
                    "archives hold dates of the real (standard) calendar; convert the file first (e.g. "
                    "xarray's ds.convert_calendar('standard', align_on='date'))")
            if "time" not in ds.coords or not np.issubdtype(ds["time"].dtype, np.datetime64):
                raise SourceError(
                    f"{path}: no decodable 'time' coordinate; add a time dimension with CF units "
                    "(e.g. 'minutes since 2024-01-01')"
                )
            times = _seconds(ds["time"].values)
        return [SourceItem(time=t, path=path, index_in_file=i) for i, t in enumerate(times)]

    def time_step(self) -> np.timedelta64 | None:
        """The most common spacing of the times (None with fewer than two times)."""
        return most_common_step(item.time for item in self.items())

    def step_from_spacing(self) -> bool:
        """Always: CF time coordinates state times, not a step."""
        return True

    def read_grid(self, item: SourceItem) -> Grid:
        """The grid from the y/x coordinates and the CF grid-mapping variable.

        Raises:
            SourceError: if coordinates or the grid mapping are missing.
        """
        with _open(item.path) as ds:
            name = self._variables(ds, item.path)[0]
            y_dim, x_dim = _spatial_dims(ds, name, item.path)
            mapping = ds[name].attrs.get("grid_mapping") or ds[name].encoding.get("grid_mapping")
            lonlat = (y_dim, x_dim) in LONLAT_DIMS
            if (not mapping or mapping not in ds.variables) and not lonlat:
                raise SourceError(
                    f"{item.path}: variable {name!r} has no CF grid mapping; add a grid-mapping variable "
                    "and point at it (e.g. ds['crs'] = xr.DataArray(0, attrs=pyproj.CRS(...).to_cf()); "
                    f"ds[{name!r}].attrs['grid_mapping'] = 'crs')"
                )
            if y_dim not in ds.coords or x_dim not in ds.coords:
                raise SourceError(f"{item.path}: coordinates {y_dim!r}/{x_dim!r} are missing; "
                                  "write the projected pixel-centre coordinates")
            units = str(ds[x_dim].attrs.get("units", "degrees_east" if lonlat else "m"))
            attrs = dict(ds[mapping].attrs) if mapping in ds.variables else LONLAT
            try:
                grid = grid_from_cf(ds[y_dim].values, ds[x_dim].values, attrs, units)
                grid.to_lonlat()
                return grid
            except InputError as error:  # no transformation to longitude and latitude
                raise SourceError(f"{item.path}: grid mapping {mapping!r}: {error}") from error
            except pyproj.exceptions.CRSError as error:
                raise SourceError(f"{item.path}: grid mapping {mapping!r} is not a valid CF grid "
                                  f"mapping ({error}); write it with pyproj.CRS.to_cf()") from error

    def read(self, item: SourceItem) -> dict[str, np.ndarray]:
        """Every selected variable at the item's time, float32 (y, x), fill values as NaN.

        Raises:
            SourceError: for a missing variable, wrong dims or an unreadable file.
        """
        frames = {}
        with _open(item.path) as ds:
            times = _seconds(ds["time"].values) if "time" in ds else np.zeros(0, "datetime64[s]")
            if item.index_in_file >= len(times) or times[item.index_in_file] != item.time:
                raise SourceError(
                    f"{item.path}: time index {item.index_in_file} is no longer {item.time}; the file "
                    "changed after it was listed: list the source again"
                )
            for name in self._variables(ds, item.path):
                y_dim, x_dim = _spatial_dims(ds, name, item.path)
                shape = (ds.sizes[y_dim], ds.sizes[x_dim])
                try:
                    values = ds[name].isel(time=item.index_in_file).transpose(y_dim, x_dim).values
                except Exception as error:  # any decoding failure means a bad file
                    raise SourceError(
                        f"{item.path}: cannot read {name!r} at time index {item.index_in_file} "
                        f"({type(error).__name__}: {error}); the file is corrupt or truncated"
                    ) from error
                frame = check_frame_shape(item, name, values, shape)
                frames[name] = outside_valid_range_masked(frame, *_valid_range(ds[name], item.path),
                                                          where=f"{item.path}: {name}")
        return frames


@functools.lru_cache(maxsize=32)
def _first_file_variables(source: NetCDFSource) -> tuple[str, ...]:
    """Every (time, y, x) variable of the source's first file (cached per process), so that
    ``variables=None`` means the same fields in every file."""
    path = source.files()[0]
    with _open(path) as ds:
        names = tuple(
            str(name) for name, var in ds.data_vars.items()
            if _grid_dims(var.dims) is not None
        )
        if not names:
            held = ", ".join(f"{name} {var.dims}" for name, var in ds.data_vars.items())
            found = (f"its variables are {held}; {DIMS_WANTED}" if ds.data_vars else
                     "it holds no variables at its root: a radar product in HDF5 groups (KNMI, ODIM) with "
                     "a NetCDF name? give it its own name (.h5) and ingest it with its format")
            raise SourceError(f"{path}: no (time, y, x) variable to ingest; {found}")
    return names


def _check_units(ds: xr.Dataset, names: tuple[str, ...], path: str, seen: dict[str, tuple[str, str]]) -> None:
    """Each variable's units equal those of the first file that had it (recorded in ``seen``)."""
    for name in names:
        found = str(ds[name].attrs.get("units", "")).strip()
        first = seen.setdefault(name, (found, path))
        if not same_units(found, first[0]):
            raise SourceError(
                f"{path}: variable {name!r} is in {found!r} but {first[1]} has it in {first[0]!r}; one "
                "archive variable has one unit: convert the files to one unit, or ingest them separately")


def _seconds(times: np.ndarray) -> np.ndarray:
    """Decoded times to the nearest second: a float encoding ('hours since 1900-01-01') decodes 00:05 as
    00:04:59.999999488, which a cast cut to 00:04:59, off every 5-minute axis."""
    nanoseconds = np.atleast_1d(times).astype("datetime64[ns]")
    return (nanoseconds + np.timedelta64(500, "ms")).astype("datetime64[s]")


def outside_valid_range_masked(frame: np.ndarray, low: float | None, high: float | None,
                               where: str = "") -> np.ndarray:
    """``frame`` with its values outside the variable's own valid range as NaN (missing), as CF defines
    them and netCDF4 reads them (they had refused the whole batch), with a warning that counts them
    (``where`` names the file and variable). Infinities stay: the ingest check refuses them, with the
    count; the archive's own range is checked there too."""
    finite, outside = np.isfinite(frame), np.zeros(frame.shape, dtype=bool)
    if low is not None:
        outside |= finite & (frame < low)
    if high is not None:
        outside |= finite & (frame > high)
    if not outside.any():
        return frame
    log.warning("%s: %d values outside its valid range [%s, %s] read as missing (CF); if they are "
                "measurements, the file's units or range attributes are wrong", where,
                int(outside.sum()), low, high)
    frame = np.array(frame, dtype=np.result_type(frame.dtype, np.float32))
    frame[outside] = np.nan
    return frame


def _valid_range(var: xr.DataArray, path: str) -> tuple[float | None, float | None]:
    """The variable's valid minimum and maximum in physical units: CF's ``valid_min``/``valid_max`` or
    ``valid_range``, given in the stored (packed) units when the variable is packed, so unpacked here
    with its ``scale_factor`` and ``add_offset`` (read as physical, a packed degC range of 0..10000 refused
    good data and passed 10000 degC).

    Raises:
        SourceError: naming the file, the variable and the attribute that is not a number.
    """
    attrs, scale = var.attrs, var.encoding.get("scale_factor", 1.0)
    offset = var.encoding.get("add_offset", 0.0)

    def bound(key: str, index: int) -> float | None:
        value = attrs.get(key)
        if value is None:
            return None
        try:
            number = float(np.asarray(value, dtype="float64").reshape(-1)[index])
        except (ValueError, TypeError, IndexError):
            raise SourceError(f"{path}: variable {var.name!r} has {key} {value!r}, not a number; fix or "
                              f"remove that attribute") from None
        return number * float(scale) + float(offset)

    low = bound("valid_min", 0) if "valid_min" in attrs else bound("valid_range", 0)
    high = bound("valid_max", 0) if "valid_max" in attrs else bound("valid_range", 1)
    if low is not None and high is not None and low > high:  # a negative scale_factor
        low, high = high, low
    return low, high
