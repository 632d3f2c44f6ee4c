"""Radar composites read with pysteps' importers: KNMI, BoM, FMI, MeteoSwiss and ODIM_H5.

Frames are listed from file names (KNMI, BoM, FMI, MeteoSwiss: the timestamp is
in every name) or from the files' metadata (ODIM_H5, whose names differ by
service: the nominal time ``what/date`` + ``what/time``, see
:mod:`nowcast.pipelines.sources.odim`), read with the matching
``pysteps.io.importers`` function and converted with
``pysteps.utils.to_rainrate`` to a rain rate in mm/h, the archive's
precipitation unit. No-data pixels (outside radar range) stay NaN; ODIM's
undetect (observed, nothing detected) is 0 mm/h.

Reflectivity (FMI, ODIM ``DBZH``) becomes a rate through Z = a R^b: the
source's ``zr_a``/``zr_b`` options, else the file's relation (FMI: 223, 1.53;
ODIM: ``how/zr_a``, ``how/zr_b``), else Marshall-Palmer (200, 1.6).

The time step is the format's (FMI: 5 min), the accumulation period in the
names (KNMI ``_5min_``, MeteoSwiss ``_00005``), the product's for BoM
Rainfields3 (``prcp-c10``: 10 min, ``prcp-cscn``: 6 min; other products: the
spacing of the listed files) and, for ODIM, the spacing of the listed frames
(none for a single frame: ingest then asks for ``--time-step``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import itertools
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np

from nowcast.errors import InputError
from nowcast.pipelines.sources import odim
from nowcast.pipelines.sources.base import (
    SourceError,
    SourceItem,
    check_frame_shape,
    file_signature,
    has_suffix,
    list_files,
    local_file,
    most_common_step,
    sorted_unique,
)
from nowcast.pipelines.sources.importers import (
    bom_grid,
    cf_time,
    header_metadata,
    import_odim,
    import_radar,
    in_metres,
    period_minutes,
    shape_from_extent,
    to_rain_rate,
)
from nowcast.pipelines.stores.archive import PRECIP, FieldSpec
from nowcast.pipelines.stores.grid import Grid

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RadarFormat:
    """How one radar format is named, timed and read.

    Attributes:
        name: format key, e.g. ``knmi``.
        description: service and product, for messages and docs.
        suffixes: file-name endings that belong to the format (others are ignored).
        pattern: regular expression over the file name; its groups build the time
            (for a format timed by its metadata, it only selects candidate files).
        time_format: ``strptime`` format of the concatenated groups ("" when the
            time is in the file).
        example: an example file name, for messages.
        step_minutes: native time step; None where it depends on the product
            (BoM: :data:`BOM_PRODUCT_MINUTES`); KNMI and MeteoSwiss: the period in the names
            (:func:`period_minutes`); ODIM: the spacing of the frames.
        time_in_file: the frame time is read from the file's metadata (ODIM),
            because the names differ by service.
    """

    name: str
    description: str
    suffixes: tuple[str, ...]
    pattern: str
    time_format: str
    example: str
    step_minutes: int | None
    time_in_file: bool = False

    def parse_time(self, filename: str) -> np.datetime64 | None:
        """The frame time in a file name; None if the name does not follow the format,
        or the format keeps its times in the files."""
        match = re.fullmatch(self.pattern, filename)
        if not match or self.time_in_file:
            return None
        try:
            stamp = datetime.strptime("".join(match.groups()), self.time_format)
        except ValueError:
            return None
        return np.datetime64(stamp, "s")


FORMATS: dict[str, RadarFormat] = {
    fmt.name: fmt
    for fmt in (
        RadarFormat("knmi", "KNMI RAD_NL25 accumulation (HDF5, mm over the minutes in its name)", (".h5",),
                    r"RAD_NL\d+_[A-Z]+_\d+min_(\d{12})\.h5", "%Y%m%d%H%M",
                    "RAD_NL25_RAP_5min_201008260000.h5", None),
        RadarFormat("bom", "BoM Rainfields3 precipitation (NetCDF, mm or mm/h)", (".nc",),
                    r"\d+_(\d{8})_(\d{6})\.[A-Za-z0-9][\w-]*\.nc", "%Y%m%d%H%M%S",
                    "66_20201031_000000.prcp-c10.nc", None),
        RadarFormat("fmi", "FMI composite reflectivity (gzipped PGM, dBZ)", (".pgm.gz", ".pgm"),
                    r"(\d{12})_fmi\.radar\.composite\.lowest_FIN_SUOMI1\.pgm(?:\.gz)?", "%Y%m%d%H%M",
                    "201609281445_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", 5),
        RadarFormat("mch", "MeteoSwiss AQC accumulation (GIF, mm over the minutes its name ends in)",
                    (".gif",), r"AQC(\d{2})(\d{3})(\d{4})[A-Z]_\d{5}\.\d{3}\.gif", "%y%j%H%M",
                    "AQC151351545F_00005.801.gif", None),
        RadarFormat("odim", "ODIM_H5 cartesian composite (HDF5, RATE in mm/h or DBZH in dBZ)",
                    odim.ODIM_SUFFIXES, r"(?i).+\.(?:h5|hdf5?)", "",
                    "20210704155000.rad.best.comp.rate.qpe.hdf (any name; ODIM_H5 content)", None,
                    time_in_file=True),
    )
}

# Native step of the BoM Rainfields3 products whose step is known (file names
# ``<station>_<YYYYMMDD>_<HHMMSS>.<product>.nc``). Both are accumulations ending
# at the time in the name (pysteps reports unit mm and accutime 10 and 6).
BOM_PRODUCT_MINUTES = {"prcp-c10": 10, "prcp-cscn": 6}
_KNMI_SERIES = re.compile(r"(RAD_NL\d+_[A-Z]+)_\d+min_")
_BOM_NAME = re.compile(r"\d+_\d{8}_\d{6}\.([A-Za-z0-9][\w-]*)\.nc")


def bom_product(filename: str) -> str | None:
    """The Rainfields3 product in a BoM file name (``prcp-c10``), None for other names."""
    match = _BOM_NAME.fullmatch(os.path.basename(filename))
    return match[1] if match else None


class NoRadarFilesError(SourceError):
    """No file under a folder follows a radar format (it may hold other inputs, e.g. NetCDF)."""


def detect_radar_format(directory: str) -> str:
    """The radar format of the files under ``directory``, from their names or content.

    Files named like a format's files count for it (names only, as cheap as a
    listing); any other HDF5 file (``.h5``, ``.hdf``, ``.hdf5``) is opened, and
    is ODIM if its root ``Conventions`` starts with ``ODIM_H5``, whatever its
    name. KNMI's HDF5 files have no such attribute, and are told by their names.

    Raises:
        SourceError: if no file follows a supported format, or files of several
            formats are mixed (point at one format's folder instead).
    """
    counts = {name: 0 for name in FORMATS}
    for path in list_files(directory, tuple(s for fmt in FORMATS.values() for s in fmt.suffixes)):
        name = os.path.basename(path)
        named = [key for key, fmt in FORMATS.items() if fmt.parse_time(name) is not None]
        for key in named:
            counts[key] += 1
        if not named and has_suffix(name, odim.ODIM_SUFFIXES):
            with local_file(path) as local:
                counts["odim"] += odim.is_odim(local)
    present = [name for name, count in counts.items() if count]
    if len(present) == 1:
        return present[0]
    if not present:
        raise NoRadarFilesError(
            f"no radar file of a supported format under {directory!r}; supported formats: "
            + ", ".join(f"{fmt.name} (e.g. {fmt.example})" for fmt in FORMATS.values())
        )
    raise SourceError(
        f"{directory!r} mixes radar formats {present} ({', '.join(f'{counts[n]} {n}' for n in present)}); "
        "give the folder of one format"
    )


_REFLECTIVITY_FORMATS = ("fmi", "odim")


@dataclasses.dataclass(frozen=True)
class RadarSource:
    """Radar composite files of one format under a folder.

    Attributes:
        directory: folder searched recursively for the format's files.
        fmt: one of :data:`FORMATS` (``knmi``, ``bom``, ``fmi``, ``mch``, ``odim``).
        product: BoM only: the Rainfields3 product to read (``prcp-c10``,
            ``prcp-cscn``, ...) from a folder holding several; default: the only
            one in the folder.
        quantity: ODIM only: ``RATE`` (mm/h) or ``DBZH`` (dBZ); default: RATE in
            files that hold it, else DBZH. Every file must resolve to the same one.
        zr_a, zr_b: reflectivity formats only (FMI, ODIM ``DBZH``): Z = a R^b
            used for the rain rate; default: the file's relation, else
            Marshall-Palmer (200, 1.6).
    """

    directory: str
    fmt: str
    product: str | None = None
    quantity: str | None = None
    zr_a: float | None = None
    zr_b: float | None = None

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise SourceError(f"unknown radar format {self.fmt!r}; supported formats: {sorted(FORMATS)}")
        object.__setattr__(self, "directory", os.fspath(self.directory))
        if self.product is not None and self.fmt != "bom":
            raise SourceError(f"{option('product', self.product)} applies to BoM Rainfields3 folders (format "
                              f"bom), not to {self.fmt}; drop it")
        if self.quantity is not None:
            if self.fmt != "odim":
                raise SourceError(f"{option('quantity', self.quantity)} applies to ODIM files (format odim), "
                                  f"not to {self.fmt}; drop it")
            quantity = str(self.quantity).upper()
            if quantity not in odim.QUANTITIES:
                raise SourceError(f"{option('quantity', self.quantity)}: ODIM files are read as one of "
                                  f"{list(odim.QUANTITIES)} (rain rate or reflectivity); pick one")
            object.__setattr__(self, "quantity", quantity)
        for key in ("zr_a", "zr_b"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.fmt not in _REFLECTIVITY_FORMATS:
                raise SourceError(f"{option(key, value)}: a Z-R relation applies to reflectivity formats "
                                  f"({', '.join(_REFLECTIVITY_FORMATS)}); {self.fmt} files hold rain "
                                  "amounts or rates: drop it")
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if not number > 0 or not np.isfinite(number):
                raise SourceError(f"{option(key, value)}: give a positive number (Marshall-Palmer: "
                                  f"a {odim.MARSHALL_PALMER[0]}, b {odim.MARSHALL_PALMER[1]})")
            object.__setattr__(self, key, number)

    @property
    def name(self) -> str:
        return self.fmt

    @property
    def format(self) -> RadarFormat:
        return FORMATS[self.fmt]

    def fields(self) -> tuple[FieldSpec, ...]:
        return (PRECIP,)

    def time_step(self) -> np.timedelta64 | None:
        """The native step (see the module docstring).

        A single file of a BoM product of unknown step, or of ODIM, gives no
        step (None): ingest then asks for one (``--time-step``).
        """
        minutes = self.format.step_minutes
        if self.fmt == "bom":
            product = self.product or bom_product(self.items()[0].path)
            minutes = BOM_PRODUCT_MINUTES.get(product or "")
            if minutes is None:
                return most_common_step(item.time for item in self.items())
        elif self.fmt in ("knmi", "mch"):  # the first name that gives one (items() checks they agree)
            return next(filter(None, (self.file_step(path) for path in self.files())), None)
        elif self.fmt == "odim":  # a single frame gives no step: the product's may be 5, 6, 10, 15 min
            return most_common_step(item.time for item in self.items())
        return _minutes(minutes)

    def step_from_spacing(self) -> bool:
        """Whether :meth:`time_step` is the frames' spacing: ODIM, and a BoM product of unknown step (told
        by the files' names alone: a stray file, or none yet, must not stop a watcher's poll)."""
        if self.fmt == "bom":
            try:
                names = self.files()
            except SourceError:  # no file yet
                return False
            product = self.product or next(filter(None, map(bom_product, names)), None)
            return BOM_PRODUCT_MINUTES.get(product or "") is None
        return self.fmt == "odim"

    def file_step(self, path: str) -> np.timedelta64 | None:
        """The step one file's name states: the accumulation period (KNMI, MeteoSwiss), the product's step
        (BoM); None for the other formats, and for a name that states none."""
        if self.fmt == "bom":
            return _minutes(BOM_PRODUCT_MINUTES.get(bom_product(path) or ""))
        return _minutes(period_minutes(self.fmt, path))

    def file_series(self, path: str) -> str | None:
        """The radar and product one file's name states, one per archive: KNMI's composite and product
        (``RAD_NL25_RAP``; a ``RAC`` or ``NL21`` file matches the name pattern too), BoM's station and
        product (``66 prcp-c10``); ODIM's quantity, from the file's header (``ODIM RATE``: a watcher
        appended reflectivity files to a rain-rate archive, as did a batch of them into it); None for the
        other formats (one product per name pattern)."""
        name = os.path.basename(path)
        if self.fmt == "knmi" and (found := _KNMI_SERIES.match(name)):
            return found[1]
        if self.fmt == "bom" and (product := bom_product(name)):
            return f"{name.split('_', 1)[0]} {product}"
        if self.fmt == "odim":
            return f"ODIM {self._odim_quantity(path)}"
        return None

    def _odim_quantity(self, path: str) -> str:
        """The quantity an ODIM file is read as, remembered per file version by :meth:`_odim_item`: the
        listing has just read it, and an object store would download the file again."""
        try:
            return _ODIM_QUANTITIES[(path, file_signature(path), self.quantity)]
        except (KeyError, OSError):  # not read yet, or gone since the listing (its read names it)
            return self._odim_item(path)[1]

    def files(self) -> list[str]:
        """The format's files under the folder (with ``product``: that BoM product's), in path order.

        Raises:
            SourceError: on a missing folder, or one without such files.
        """
        fmt = self.format
        paths = list_files(self.directory, fmt.suffixes)
        if self.product is not None:
            paths = [path for path in paths if bom_product(path) in (None, self.product)]
        if not paths:
            wanted = f"{fmt.name} files" + (f" of product {self.product}" if self.product else "")
            raise SourceError(
                f"no {wanted} ({' or '.join(fmt.suffixes)}, e.g. {fmt.example}) under "
                f"{self.directory!r}; check the folder and the format (detected: "
                f"{_try_detect(self.directory)})"
            )
        return paths

    def file_items(self, path: str) -> list[SourceItem]:
        """The frame of one file, at the time in its name (ODIM: in its metadata).

        A watcher lists file by file, so that one bad file is refused alone.

        Raises:
            SourceError: naming the file, when its name holds no time (ODIM: its header is unreadable
                or holds no quantity that is read).
        """
        if self.format.time_in_file:
            return [self._odim_item(path)[0]]
        time = self.format.parse_time(os.path.basename(path))
        if time is None:
            raise SourceError(
                f"{path}: cannot read a time from the name; {self.format.name} files are named like "
                f"{self.format.example}: rename the file or move it out of {self.directory!r}"
            )
        return [SourceItem(time=time, path=path)]

    def items(self) -> list[SourceItem]:
        """Every file of the format, by time parsed from its name (ODIM: from its metadata).

        Raises:
            SourceError: on a missing or empty folder, a name without a parsable
                time, two files at the same time, BoM products mixed, or ODIM
                files that are not ODIM or do not share a quantity.
        """
        paths = self.files()
        if self.format.time_in_file:
            return sorted_unique(self._odim_items(paths))
        items = [item for path in paths for item in self.file_items(path)]
        if self.fmt == "bom":
            self._check_one_product(items)
        if self.fmt in ("knmi", "mch"):
            self._check_one_period(items)
        self._check_one_series(items)
        return sorted_unique(items)

    def _check_one_series(self, items: list[SourceItem]) -> None:
        """Refuses files of several radars or products in one listing (:meth:`file_series`): KNMI's RAP
        and RAC accumulations were ingested as one series, exit 0."""
        series = Counter(self.file_series(item.path) for item in items)
        if len(series) > 1:
            found = ", ".join(f"{count} {name}" for name, count in sorted(series.items(), key=str))
            raise SourceError(f"{self.directory!r} mixes {self.fmt} radars or products ({found}, by their "
                              "names); give the folder of one, each into an archive of its own")

    def _check_one_period(self, items: list[SourceItem]) -> None:
        """Refuses accumulations of several periods in one listing (KNMI, MeteoSwiss), and a period of 0."""
        periods = Counter(period_minutes(self.fmt, item.path) for item in items)
        if len(periods) > 1 or 0 in periods:
            found = ", ".join(f"{count} of {minutes} min" for minutes, count in sorted(periods.items()))
            raise SourceError(f"{self.directory!r} holds {self.fmt} accumulations of other periods than one "
                              f"(the period in the names: {found}); give the folder of one period of more "
                              "than 0 minutes")

    def _check_one_product(self, items: list[SourceItem]) -> None:
        """Refuses BoM products mixed in one listing (different steps and accumulations)."""
        products = Counter(bom_product(item.path) or "" for item in items)
        if len(products) > 1:
            found = ", ".join(f"{count} {product}" for product, count in sorted(products.items()))
            raise SourceError(
                f"{self.directory!r} mixes BoM Rainfields3 products ({found}); give the folder of one "
                f"product, or name one: {option('product', sorted(products)[0])}"
            )

    def _odim_item(self, path: str) -> tuple[SourceItem, str]:
        """One ODIM file's item at its nominal time, and the quantity it is read as."""
        with local_file(path) as local:
            header = odim.read_header(local)
        quantity = odim.choose_quantity(header, path, self.quantity)
        with contextlib.suppress(OSError):
            if len(_ODIM_QUANTITIES) >= 4096:  # every listed file passes here: bounded
                _ODIM_QUANTITIES.clear()
            _ODIM_QUANTITIES[(path, file_signature(path), self.quantity)] = quantity
        return SourceItem(time=header.time, path=path), quantity

    def _odim_items(self, paths: list[str]) -> list[SourceItem]:
        """Items at the files' nominal times; every file must resolve to the same quantity."""
        items: list[SourceItem] = []
        by_quantity: dict[str, list[str]] = {}
        for path in paths:
            item, quantity = self._odim_item(path)
            by_quantity.setdefault(quantity, []).append(path)
            items.append(item)
        if len(by_quantity) > 1:
            found = ", ".join(f"{len(files)} read as {quantity} (e.g. {os.path.basename(files[0])})"
                              for quantity, files in sorted(by_quantity.items()))
            raise SourceError(
                f"{self.directory!r}: the ODIM files do not share a quantity ({found}); give the folder of "
                f"one product, or {option('quantity', 'DBZH')} if every file holds reflectivity"
            )
        if "RATE" in by_quantity and (self.zr_a is not None or self.zr_b is not None):
            raise SourceError(
                f"{self.directory!r}: a Z-R relation (--zr-a/--zr-b) given, but the ODIM files are read as "
                f"RATE (already mm/h); drop it, or give {option('quantity', 'DBZH')} to read reflectivity"
            )
        return items

    def read_grid(self, item: SourceItem) -> Grid:
        """The file's grid (BoM, FMI, ODIM: header only; MeteoSwiss: the fixed CCS4 domain)."""
        try:
            with local_file(item.path) as path:
                return self._read_grid(path)
        except SourceError:
            raise
        except Exception as error:  # any reader failure means a bad file
            raise _unreadable(self.fmt, item.path, error) from error

    def _read_grid(self, path: str) -> Grid:
        grid = self._grid(path)
        try:
            grid.to_lonlat()
        except InputError as error:
            raise SourceError(f"{path}: {error}") from error
        return grid

    def _grid(self, path: str) -> Grid:
        if self.fmt == "bom":
            return bom_grid(path)
        shape: tuple[int, int] | None
        if self.fmt in ("fmi", "mch"):
            metadata = header_metadata(self.fmt, path)
            shape = shape_from_extent(metadata)
        elif self.fmt == "odim":
            metadata, shape = odim.geodata(path)
        else:  # KNMI: the importer reads the whole (small) file anyway
            shape = None
        if shape is None:
            field, metadata = import_radar(self.fmt, path, self.quantity)
            shape = field.shape
        return Grid.from_pysteps_metadata(in_metres(metadata), shape)

    def read(self, item: SourceItem) -> dict[str, np.ndarray]:
        """The frame as a rain rate in mm/h (float32, NaN outside radar coverage).

        Raises:
            SourceError: if the file is corrupt, truncated or not of this format.
        """
        try:
            expected: tuple[int, int] | None
            stated: np.datetime64 | None = None
            with local_file(item.path) as path:
                if self.fmt == "odim":
                    field, metadata, expected = import_odim(path, self.quantity)
                else:
                    field, metadata = import_radar(self.fmt, path)
                    expected = None if self.fmt == "bom" else shape_from_extent(metadata)
                    stated = stated_time(self.fmt, path)
                    check_stated_period(self.fmt, item.path, stated_period(self.fmt, path))
            if stated is not None and stated != item.time:  # numpy compares across units
                raise SourceError(f"{item.path}: its name says {item.time}, the file itself {stated} (a file "
                                  "renamed or copied under another time); give it the name of its own time, "
                                  "or move it out")
            metadata.update({key: value for key in ("zr_a", "zr_b")
                             if (value := getattr(self, key)) is not None})
            rate = to_rain_rate(field, metadata)
            if metadata.get("unit") == "dBZ":
                rate = hail_capped(rate, item.path)
        except SourceError:
            raise
        except Exception as error:  # any reader failure means a bad file
            raise _unreadable(self.fmt, item.path, error) from error
        return {PRECIP.name: check_frame_shape(item, PRECIP.name, rate, expected)}


def hail_capped(rate: np.ndarray, path: str) -> np.ndarray:
    """Rain rates from reflectivity capped at the archive's ``valid_max`` (1000 mm/h, 70 dBZ in
    Marshall-Palmer), as radar rain estimates cap hail. Composites do reach 70+ dBZ in hail cores and
    clutter, and one such pixel had refused the frame's whole batch; an amount or rate product above it
    stays refused (a unit error, not a measurement)."""
    cap = float(PRECIP.valid_max)  # type: ignore[arg-type]
    above = int(np.count_nonzero(rate > cap))
    if above:
        log.warning("%s: %d pixels above %g mm/h (hail or clutter) capped at it", path, above, cap)
        rate = np.minimum(rate, np.float32(cap))  # NaN stays NaN
    return rate


def flag(name: str) -> str:
    """A source option's command-line flag: ``--zr-a`` for ``zr_a``."""
    return f"--{name.replace('_', '-')}"


def option(name: str, value: object) -> str:
    """A source option as both its users spell it: ``--zr-a 300 (zr_a=300 in Python)``."""
    return f"{flag(name)} {value} ({name}={value!r} in Python)"


_ODIM_QUANTITIES: dict[tuple[str, tuple[object, ...], str | None], str] = {}  # see _odim_quantity


def stated_time(fmt: str, path: str) -> np.datetime64 | None:
    """The time a radar file states inside it, where its format has one: BoM's ``valid_time``, KNMI's
    ``product_datetime_end``, FMI's ``obstime`` header line; None for the others (MeteoSwiss, whose GIFs
    hold none; ODIM, whose items already take it from the file) and for a file that does not state it."""
    if fmt == "bom":
        import netCDF4

        with netCDF4.Dataset(path) as ds:
            valid = ds.variables.get("valid_time")
            return None if valid is None else cf_time(valid)
    if fmt == "knmi":
        return _knmi_product_times(path)[1]
    if fmt == "fmi":
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as handle:
            for line in itertools.islice(handle, 64):  # the header's comment lines come first
                if line.startswith(b"# obstime ") and len(words := line.split()) > 2:
                    return parsed_time(words[2].decode(errors="replace"), FMI_TIMES)
    return None


KNMI_TIMES = ("%d-%b-%Y;%H:%M:%S.%f", "%d-%b-%Y;%H:%M:%S", "%d-%b-%Y;%H:%M")
FMI_TIMES = ("%Y%m%d%H%M", "%Y%m%d%H%M%S", "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M",
             "%Y-%m-%dT%H:%M:%S")


def parsed_time(text: str, forms: Sequence[str]) -> np.datetime64 | None:
    """``text`` read with the first of ``forms`` that fits, to the second; None if none does. A time a
    file states is a check on the time its name gives, so a spelling not foreseen skips the check rather
    than refuse a file that pysteps reads."""
    for form in forms:
        try:
            return np.datetime64(datetime.strptime(text.strip(), form).replace(microsecond=0), "s")
        except ValueError:
            continue
    return None


def check_stated_period(fmt: str, path: str, stated: np.timedelta64 | None) -> None:
    """Refuses a file whose name (``path``) states another accumulation period than the file itself
    (``stated``, :func:`stated_period`): its amounts
    were converted to mm/h by the name's period (a 5-minute file named ``_60min_`` was read 12 times too
    low, exit 0).

    Raises:
        SourceError: naming both periods and the fix.
    """
    named = period_minutes(fmt, path)
    if named and stated is not None and stated != np.timedelta64(named, "m"):
        raise SourceError(f"{path}: its name says an accumulation of {named} min, the file itself "
                          f"{int(stated // np.timedelta64(1, 'm'))} min (product_datetime_start to _end), so "
                          "its amounts would be converted to mm/h with the wrong period; give it the name of "
                          "its own period, or move it out")


def stated_period(fmt: str, path: str) -> np.timedelta64 | None:
    """The accumulation period a radar file states inside it: KNMI's ``product_datetime_end`` less its
    ``product_datetime_start``; None for the other formats and a file that does not state both."""
    if fmt != "knmi":
        return None
    start, end = _knmi_product_times(path)
    return None if start is None or end is None else end - start


def _knmi_product_times(path: str) -> tuple[np.datetime64 | None, np.datetime64 | None]:
    """A KNMI file's ``product_datetime_start`` and ``product_datetime_end`` (None where absent)."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = f["overview"].attrs if "overview" in f else {}
        stamps = [attrs.get(f"product_datetime_{edge}") for edge in ("start", "end")]

    def parsed(value) -> np.datetime64 | None:
        if value is None:
            return None
        text = np.asarray(value).ravel()[0]
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        return parsed_time(text, KNMI_TIMES)

    start, end = (parsed(value) for value in stamps)
    return start, end


def _unreadable(fmt: str, path: str, error: Exception) -> SourceError:
    """A file the format's reader fails on. The format may have been told by the file's name alone (all
    but ODIM), so the message also gives the fix for a folder of another format."""
    other = "" if FORMATS[fmt].time_in_file else (
        f"; if the folder holds another format (its names look like {fmt}'s), name it with --format "
        "(netcdf for CF NetCDF files)")
    return SourceError(
        f"{path}: cannot read it as a {FORMATS[fmt].description} file "
        f"({type(error).__name__}: {error}); the file is corrupt, truncated or of another format: "
        f"download it again, or delete it to ingest that frame as missing{other}"
    )


def _try_detect(directory: str) -> str:
    try:
        return detect_radar_format(directory)
    except SourceError:
        return "none"


def _minutes(minutes: int | None) -> np.timedelta64 | None:
    return np.timedelta64(timedelta(minutes=minutes), "s") if minutes else None
