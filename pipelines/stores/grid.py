"""Grids: projected x/y coordinates plus a CF grid mapping.

A grid is compared by shape, coordinates and CRS, so a radar file on another
grid or projection is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyproj
import xarray as xr

from nowcast.errors import InputError

CRS_VAR = "crs"


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """A regular projected grid: pixel-centre coordinates and a CRS.

    Attributes:
        y: pixel-centre y coordinates, in file order (descending for north-up).
        x: pixel-centre x coordinates.
        crs_attrs: CF grid-mapping attributes (``grid_mapping_name``,
            ``crs_wkt`` and, when known, the original ``proj4`` string).
        units: unit of the coordinates (``m``, ``km``, or ``degrees`` for a longitude/latitude grid,
            stored as CF's ``degrees_east`` and ``degrees_north``).
    """

    y: np.ndarray
    x: np.ndarray
    crs_attrs: Mapping[str, object]
    units: str = "m"

    def __post_init__(self) -> None:  # one spelling of degrees, whichever a file or a store used
        if self.units in DEGREE_SPELLINGS:
            object.__setattr__(self, "units", DEGREES)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.y), len(self.x))

    @property
    def crs(self) -> pyproj.CRS:
        if "crs_wkt" in self.crs_attrs:
            return pyproj.CRS.from_wkt(str(self.crs_attrs["crs_wkt"]))
        return pyproj.CRS.from_cf(dict(self.crs_attrs))

    @classmethod
    def from_pysteps_metadata(cls, metadata: Mapping[str, Any], shape: tuple[int, int]) -> Grid:
        """The grid described by a pysteps importer's metadata."""
        ny, nx = shape
        x1, x2 = float(metadata["x1"]), float(metadata["x2"])
        y1, y2 = float(metadata["y1"]), float(metadata["y2"])
        dx = (x2 - x1) / nx
        dy = (y2 - y1) / ny
        x = x1 + (np.arange(nx) + 0.5) * dx
        y = y1 + (np.arange(ny) + 0.5) * dy
        if metadata.get("yorigin", "upper") == "upper":
            y = y[::-1]
        return cls(y=y, x=x, crs_attrs=cf_grid_mapping(str(metadata["projection"])),
                   units=str(metadata.get("cartesian_unit", "m")))

    @classmethod
    def from_coords(cls, y: np.ndarray, x: np.ndarray, crs: pyproj.CRS | str,
                    units: str = "m") -> Grid:
        proj = crs.to_proj4() if isinstance(crs, pyproj.CRS) else str(crs)
        return cls(y=np.asarray(y, "float64"), x=np.asarray(x, "float64"),
                   crs_attrs=cf_grid_mapping(proj), units=units)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> Grid:
        crs_name = _grid_mapping_name(ds)
        return cls(y=ds["y"].values, x=ds["x"].values, crs_attrs=dict(ds[crs_name].attrs),
                   units=str(ds["x"].attrs.get("units", "m")))

    @classmethod
    def from_zarr_group(cls, group) -> Grid:
        return cls(y=group["y"][:], x=group["x"][:], crs_attrs=dict(group[CRS_VAR].attrs),
                   units=str(group["x"].attrs.get("units", "m")))

    def coords(self) -> dict[str, tuple]:
        """xarray coordinates (with CF attributes) for this grid."""
        if self.units == DEGREES:  # CF: true latitude and longitude, or a rotated pole's
            rotated = self.crs_attrs.get("grid_mapping_name") != "latitude_longitude"
            y_attrs, x_attrs = (({"standard_name": "grid_latitude", "units": "degrees"},
                                 {"standard_name": "grid_longitude", "units": "degrees"}) if rotated else
                                ({"standard_name": "latitude", "units": "degrees_north"},
                                 {"standard_name": "longitude", "units": "degrees_east"}))
            return {"y": ("y", np.asarray(self.y, "float64"), {**y_attrs, "axis": "Y"}),
                    "x": ("x", np.asarray(self.x, "float64"), {**x_attrs, "axis": "X"})}
        return {
            "y": ("y", np.asarray(self.y, "float64"),
                  {"standard_name": "projection_y_coordinate", "units": self.units, "axis": "Y"}),
            "x": ("x", np.asarray(self.x, "float64"),
                  {"standard_name": "projection_x_coordinate", "units": self.units, "axis": "X"}),
        }

    def geographic_coords(self) -> dict[str, tuple]:
        """2-D ``latitude`` and ``longitude`` of the pixel centres (WGS 84, from the grid mapping), as
        xarray coordinates: what a plot or a regional selection needs without pyproj."""
        metres = 1000.0 if self.units == "km" else 1.0
        per_unit = self.crs.axis_info[0].unit_conversion_factor if self.crs.axis_info else 1.0
        xx, yy = np.meshgrid(np.asarray(self.x) * metres / per_unit, np.asarray(self.y) * metres / per_unit)
        if self.crs.is_geographic:  # the coordinates are degrees already
            xx, yy = np.meshgrid(np.asarray(self.x), np.asarray(self.y))
        lon, lat = self.to_lonlat().transform(xx, yy)
        return {"latitude": (("y", "x"), np.asarray(lat, "float32"),
                             {"standard_name": "latitude", "units": "degrees_north"}),
                "longitude": (("y", "x"), np.asarray(lon, "float32"),
                              {"standard_name": "longitude", "units": "degrees_east"})}

    def to_lonlat(self) -> pyproj.Transformer:
        """The transformation of the grid's projection to WGS 84 longitude and latitude.

        Raises:
            InputError: naming the projection, when PROJ has none (an ellipsoid of another size than the
                Earth's, such as one given in km, was a pyproj traceback in every ingest).
        """
        try:
            return pyproj.Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        except pyproj.exceptions.ProjError as error:
            named = self.crs_attrs.get("proj4") or self.crs.srs  # the file's own spelling where it has one
            raise InputError(f"projection {named!r} has no transformation to longitude and latitude "
                             f"on the Earth ({error}); its ellipsoid must be the Earth's in metres (e.g. "
                             "+a=6378137, not the km of +a=6378.137)") from error

    def mapping_coord(self) -> dict[str, xr.DataArray]:
        """The grid mapping as a scalar coordinate (``crs``), so it stays with any variable selected."""
        return {CRS_VAR: xr.DataArray(np.int32(0), attrs=dict(self.crs_attrs))}

    def mismatch(self, other: Grid) -> str | None:
        """Describes how ``other`` differs from this grid, or None if it matches."""
        if self.shape != other.shape:
            return f"shape {other.shape} (y, x) instead of {self.shape}"
        if self.units != other.units:
            return f"coordinate units {other.units!r} instead of {self.units!r}"
        pixel = max(abs(float(np.diff(self.x[:2])[0])) if len(self.x) > 1 else 1.0, 1e-9)
        for name, mine, theirs in (("x", self.x, other.x), ("y", self.y, other.y)):
            if not np.allclose(mine, theirs, rtol=0, atol=1e-3 * pixel):
                offset = float(np.max(np.abs(np.asarray(mine) - np.asarray(theirs))))
                return f"{name} coordinates differ by up to {offset:g} {self.units}"
        if not self.crs.equals(other.crs, ignore_axis_order=True):
            return f"projection {other.crs.to_proj4()!r} instead of {self.crs.to_proj4()!r}"
        return None


DEGREES = "degrees"
DEGREE_SPELLINGS = frozenset({"degrees", "degree", "degrees_east", "degree_east", "degrees_E", "degree_E",
                              "degreesE", "degreeE", "degrees_north", "degree_north", "degrees_N",
                              "degree_N", "degreesN", "degreeN"})


def south_first(y: np.ndarray) -> bool:
    """Whether rows with these y coordinates run from south to north (y ascends, as in many CF NetCDF
    files): pictures, which draw row 0 at the top, flip such a grid to show it north up."""
    return len(y) > 1 and bool(y[0] < y[-1])


def east_first(x: np.ndarray) -> bool:
    """Whether columns with these x coordinates run from east to west (x descends): pictures, which draw
    column 0 at the left, flip such a grid to show west on the left."""
    return len(x) > 1 and bool(x[0] > x[-1])


def drawn_north_up(frames: np.ndarray, south: bool, east: bool) -> np.ndarray:
    """``frames`` (``(..., y, x)``) as a map draws them: north at the top, west at the left."""
    return frames[..., ::-1 if south else 1, ::-1 if east else 1]


def crs_of(projection: str) -> pyproj.CRS:
    """The CRS a file names: a PROJ string, ``EPSG:3035``, WKT, anything pyproj reads.

    The deprecated ``+init=epsg:XXXX`` form is read without pyproj's FutureWarning: it is the file's
    spelling, nothing the user of the command can change.

    Raises:
        InputError: naming the projection, when pyproj cannot read it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return pyproj.CRS.from_user_input(projection)
        except pyproj.exceptions.CRSError as error:
            raise InputError(f"projection {projection!r} is not one pyproj can read ({error}); give a PROJ "
                             "string, an EPSG code such as 'EPSG:3035' or a WKT") from error


def cf_grid_mapping(proj4: str) -> dict[str, object]:
    """CF grid-mapping attributes for a projection (pyproj's ``to_cf``), keeping its text as ``proj4``."""
    crs = crs_of(proj4)
    attrs = {k: plain_value(v) for k, v in crs.to_cf().items()}
    attrs["proj4"] = " ".join(proj4.split())
    return attrs


def plain_value(value: object) -> object:
    """Numpy scalars (also inside lists) as Python values, so attributes serialise to JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value


def _grid_mapping_name(ds: xr.Dataset) -> str:
    for var in ds.data_vars.values():
        if "grid_mapping" in var.attrs:
            return str(var.attrs["grid_mapping"])
    if CRS_VAR in ds.variables:
        return CRS_VAR
    raise InputError("dataset has no CF grid mapping: add a 'crs' variable and grid_mapping attrs")
