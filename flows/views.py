"""Human-readable views of an archive: a text summary and a PNG of frames."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nowcast.errors import InputError
from nowcast.flows.params import parse_time
from nowcast.pipelines.stores.archive import PRECIP, VALID, open_archive, read_info, same_units
from nowcast.pipelines.stores.grid import drawn_north_up, east_first, south_first
from nowcast.pipelines.stores.groups import enclosing_store, looks_like_url
from nowcast.text import counted, utc_stamp

MAX_SHOWN_FRAMES = 48  # frames in one picture (four hours of 5-minute frames)
DEFAULT_SHOWN_FRAMES = 6  # an archive's picture: the last half hour of 5-minute frames


def archive_summary(url: str) -> str:
    """A few lines a user reads after an ingest: extent, grid, completeness, values."""
    with damage_named(url):
        return _summary_lines(url)


def _summary_lines(url: str) -> str:
    info = read_info(url)
    ds = open_archive(url)
    valid = ds[VALID].values
    lines = [
        f"archive   {url}",
        f"time      {info.start} .. {info.end} every {ds.attrs['time_step']} "
        f"({info.length} steps, {int(valid.sum())} valid, {int((~valid).sum())} missing)",
        f"grid      {info.grid.shape[0]} x {info.grid.shape[1]} (y, x), "
        f"{info.grid.crs_attrs.get('grid_mapping_name', '?')}, units {info.grid.units}",
        f"chunks    {info.time_chunk} frames x {info.spatial_chunks[0]} x {info.spatial_chunks[1]}",
    ]
    for field in info.fields:
        means = ds[f"{field.name}_mean"].values
        maxima = ds[f"{field.name}_max"].values
        finite = means[np.isfinite(means)]
        line = f"{field.name:<9} {field.units}: "
        if finite.size:
            line += f"mean {finite.mean():.3g}, max {np.nanmax(maxima):.3g}"
        else:
            line += "no valid frame yet"
        if field.thresholds and finite.size:
            above = ds[f"{field.name}_fraction_above"].values
            k = int(np.argmin(np.abs(np.asarray(field.thresholds) - 1.0)))
            line += f", mean fraction >= {field.thresholds[k]:g}: {np.nanmean(above[:, k]):.3f}"
        lines.append(line)
    return "\n".join(lines)


def picture_path(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """``path``, refused unless it ends in one of ``suffixes``: the picture's format (matplotlib would add
    .png to a path without one, or write a JPEG for .jpg, while the command named the path it was given)."""
    if not str(path).strip():
        raise InputError(f"the picture's path is empty; give one ending in {' or '.join(suffixes)}")
    if looks_like_url(str(path)):  # Path() made s3:// 's3:/'
        raise InputError(f"{path}: pictures are written to local files; give a local path (and copy the file "
                         "to the object store afterwards if it belongs there)")
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        if path.name.lower() in suffixes:  # ".png": a hidden file without a name, or a bare extension
            raise InputError(f"{path} is an extension without a file name; give a name such as "
                             f"map{path.name}")
        raise InputError(f"{path} must end in {' or '.join(suffixes)} (the picture's format)")
    store = enclosing_store(path.resolve().parent)
    if store is not None:  # a file in a store makes every later read of it warn
        raise InputError(f"{path} lies inside the zarr store {store}: give a path outside it")
    return path


def plot_frames(url: str, path: str | Path, count: int = 4, field: str | None = None) -> Path:
    """Saves a PNG of ``count`` evenly spaced valid frames in a row and returns its path; rain is drawn as
    a forecaster reads it (see :func:`show`)."""
    path = picture_path(path, (".png",))
    ds = open_archive(url)
    name = field or _field(ds)
    valid_idx = np.flatnonzero(ds[VALID].values)
    if valid_idx.size == 0:
        raise InputError(f"{url} has no valid frame to plot; ingest frames first")
    picks = valid_idx[np.linspace(0, valid_idx.size - 1, min(count, valid_idx.size)).astype(int)]
    with damage_named(url):
        steps = [[(_frame(url, ds, name, int(i)), utc_stamp(ds["time"].values[i]))] for i in picks]
    return _save(steps, _labelled(ds, name), path, _aspect(ds))


@contextlib.contextmanager
def damage_named(*urls: str) -> Iterator[None]:
    """Turns a chunk that fails to decode while the body reads ``urls`` into ``nowcast check``'s report of
    the first damaged store: the damaged chunks, their times and the fix (a codec error names none)."""
    from nowcast.pipelines.stores.integrity import StoreDamagedError, check_store

    try:
        yield
    except InputError:
        raise
    except Exception as error:
        for url in urls:
            report = check_store(url)
            if not report.ok:
                raise StoreDamagedError(report.text()) from error
        raise


def stored(url: str, name: str, index: int, frame: np.ndarray) -> np.ndarray:
    """``frame``, frame ``index`` of variable ``name`` of archive ``url``; one that reads fewer observed
    pixels than were written raises the missing chunk with the fix instead of drawing an empty map
    (:func:`~nowcast.pipelines.stores.integrity.require_stored`)."""
    from nowcast.pipelines.stores.groups import array, open_group
    from nowcast.pipelines.stores.integrity import require_stored

    require_stored(url, array(open_group(url), name), frame[None], index)
    return frame


WRAPPED_AFTER = 8  # an archive's frames to a row of a PNG
PANEL_HEIGHT_IN, DPI = 2.9, 80  # a map panel's height (inches) and the pictures' resolution
OUTSIDE_COVERAGE = "#BFBFBF"  # pysteps' grey for NaN on rain maps (grey at half alpha over white)


def north_up(ds, frame: np.ndarray) -> np.ndarray:
    """``frame`` with its first row the northernmost and its first column the westernmost: stores keep
    rows and columns in the input's order, and a CF NetCDF file with ascending y was drawn upside down,
    one with descending x mirrored (pictures draw row 0 at the top, column 0 at the left)."""
    return drawn_north_up(frame, "y" in ds.coords and south_first(ds["y"].values),
                          "x" in ds.coords and east_first(ds["x"].values))


def _is_rain(field: tuple[str, str]) -> bool:
    return same_units(field[1], PRECIP.units)


def _limits(steps: list[list[tuple[np.ndarray, str]]], field: tuple[str, str]) -> tuple[float, float] | None:
    """One colour range for every panel of a field other than rain (each panel had its own, under one
    colour bar, so four frames 15 K apart looked the same); None for rain (a fixed scale) or no data."""
    frames = [frame for step in steps for frame, _ in step if np.isfinite(frame).any()]
    if _is_rain(field) or not frames:
        return None
    return min(float(np.nanmin(f)) for f in frames), max(float(np.nanmax(f)) for f in frames)


def _draw(ax, frame: np.ndarray, field: tuple[str, str], title: str, colorbar: bool,
          limits: tuple[float, float] | None = None, aspect: float = 1.0) -> None:
    """One map of ``field`` (its name and units) as a forecaster reads it: rain on pysteps' logarithmic
    intensity scale with dry white; any other field on a plain colour scale over ``limits``, named with
    its units. Outside coverage (NaN) is grey on both, as pysteps draws it."""
    name, units = field
    if _is_rain(field):
        from nowcast.model.verification import draw_rain  # quiets pysteps itself

        draw_rain(ax, frame, colorbar)
    else:
        import matplotlib

        ax.set_facecolor("white")
        low, high = limits or (None, None)
        image = ax.imshow(frame, cmap=matplotlib.colormaps["viridis"].with_extremes(bad=OUTSIDE_COVERAGE),
                          vmin=low, vmax=high)
        ax.set_axis_off()
        if colorbar:
            ax.figure.colorbar(image, ax=ax, label=f"{name} ({units})" if units else name)
    ax.set_aspect(aspect)  # a pixel's height over its width on the ground (see _aspect)
    ax.set_title(title, fontsize=8)


def _aspect(ds) -> float:
    """A pixel's height over its width on the ground: the grid's spacings, and on a longitude/latitude
    grid the shrinking of a degree of longitude (0.34 x 0.22 degree cells at 45 N were drawn square, 2.1
    times too wide)."""
    if "x" not in ds.coords or "y" not in ds.coords or ds.sizes["x"] < 2 or ds.sizes["y"] < 2:
        return 1.0
    x, y = ds["x"].values, ds["y"].values
    ratio = abs(float(y[1] - y[0]) / float(x[1] - x[0])) if x[1] != x[0] else 1.0
    if str(ds["x"].attrs.get("units", "")).startswith("degree"):
        ratio /= max(np.cos(np.radians(float(np.mean(y)))), 0.05)
    return float(np.clip(ratio, 0.05, 20.0))


def _save(steps: list[list[tuple[np.ndarray, str]]], field: tuple[str, str], path: Path,
          aspect: float = 1.0) -> Path:
    """Saves steps of (map, title) panels: an animated GIF shows one step per frame, a PNG every step,
    one column per step (an archive's frames in a row; a forecast's leads with the observation above).

    Raises:
        InputError: the picture cannot be written there (a read-only or full folder), naming the path.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _draw_steps(steps, field, path, aspect)
    except OSError as error:
        blocking = next(p for p in (path.parent, *path.parent.parents) if p.exists())
        if blocking.is_file():  # the OS says "File exists" for a file where a folder of the path belongs
            raise InputError(f"cannot write the picture {path}: {blocking} is a file, not a folder; give a "
                             "path in a folder") from None
        raise InputError(f"cannot write the picture {path} ({error.strerror or error}); give a path in a "
                         "folder you can write to") from None
    return path


def _draw_steps(steps: list[list[tuple[np.ndarray, str]]], field: tuple[str, str], path: Path,
                aspect: float = 1.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    gif = path.suffix.lower() == ".gif"
    ny, nx = steps[0][0][0].shape
    # a panel as wide as the grid is (a 30 x 600 grid was a sliver in a square panel), within bounds
    width = float(np.clip(PANEL_HEIGHT_IN * nx / (ny * aspect), 1.8, 9.0))  # 1.8: room for a title
    panel = (PANEL_HEIGHT_IN * DPI, width * DPI)
    steps = [[(shown(frame, field, panel), title) for frame, title in step] for step in steps]
    grid = [list(row) for row in zip(*steps, strict=True)]  # rows: panel kinds; columns: steps
    if not gif and len(grid) == 1 and len(steps) > WRAPPED_AFTER:  # 48 frames made one strip 11584 px wide
        grid = [grid[0][i:i + WRAPPED_AFTER] for i in range(0, len(steps), WRAPPED_AFTER)]
    rows, columns = (1, len(steps[0])) if gif else (len(grid), max(len(row) for row in grid))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns + 0.8, PANEL_HEIGHT_IN * rows),
                             squeeze=False, layout="constrained")

    barred: list[bool] = []  # FuncAnimation draws the first step twice (once to initialise): one bar
    limits = _limits(steps, field)  # the bar drawn once holds for every frame of an animation

    def draw(step: int) -> None:
        for c, (frame, title) in enumerate(steps[step]):
            axes[0][c].clear()
            _draw(axes[0][c], frame, field, title, colorbar=not barred and c == columns - 1, limits=limits,
                  aspect=aspect)
        barred.append(True)

    try:
        if gif:
            FuncAnimation(fig, draw, frames=len(steps), interval=500).save(path, writer=PillowWriter(fps=2))
        else:
            for r, row in enumerate(grid):
                for c, (frame, title) in enumerate(row):  # one bar a row, on full rows only
                    _draw(axes[r][c], frame, field, title, colorbar=c == columns - 1, limits=limits,
                          aspect=aspect)
                for ax in axes[r][len(row):]:  # the last row of wrapped frames may be short
                    ax.set_axis_off()
            fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def shown(frame: np.ndarray, field: tuple[str, str], panel: tuple[float, float]) -> np.ndarray:
    """``frame`` as a panel of ``panel`` (height, width) pixels can show it
    (:func:`~nowcast.model.verification.block_reduced`: rain to each block's maximum, other fields to
    the mean)."""
    from nowcast.model.verification import block_reduced

    return block_reduced(frame, panel, rain=_is_rain(field))


def show(url: str, path: str | Path, *, time: str | None = None, count: int | None = None,
         archive: str | None = None, variable: str | None = None) -> Path:
    """A picture of a store (``nowcast show``): PNG, or an animated GIF when ``path`` ends in .gif.

    An archive shows ``count`` valid frames (default 6) of ``variable`` (default: the first it lists) up to
    ``time`` (default: the newest). A forecast
    store shows the forecast of init time ``time`` (default: the newest written) beside what was observed,
    lead by lead (``count`` leads spread from the first to the last; default all), read from ``archive``
    (default: the archive the store was scored from).
    """
    from nowcast.pipelines.stores.archive import read_info
    from nowcast.pipelines.stores.forecasts import (
        WRITTEN,
        ForecastStoreError,
        check_made_from,
        open_forecasts,
        read_store_info,
    )
    from nowcast.pipelines.stores.groups import exists, holds, open_group

    if count is not None and not 1 <= count <= MAX_SHOWN_FRAMES:  # 0 once showed every frame of the archive
        raise InputError(f"--frames {count} must be 1..{MAX_SHOWN_FRAMES} (the frames in one picture); "
                         "show a longer stretch as several pictures with --time")
    path = picture_path(path, (".png", ".gif"))
    if not holds(open_group(url), WRITTEN):  # not a forecast store: an archive (open_archive checks that)
        if archive is not None:  # it was ignored, exit 0
            raise InputError(f"--archive names the observations beside a forecast store's forecasts; {url} "
                             "is an archive, shown alone: drop --archive")
        name = _variable(url, variable)
        with damage_named(url):
            ds = open_archive(url)
            panels = _archive_panels(url, ds, name, time, DEFAULT_SHOWN_FRAMES if count is None else count)
        return _save(panels, _labelled(ds, name), path, _aspect(ds))
    try:
        ds = open_forecasts(url)
        observed = archive or str(ds.attrs["archive_url"])
        if not archive and not exists(observed):  # moved since: a re-ingest is not the fix
            raise InputError(f"the archive {url} was scored from is not at {observed} any more: give its "
                             "path now with --archive")
        check_made_from(read_store_info(url), read_info(observed), observed)  # else frames of another
    except ForecastStoreError as error:
        raise InputError(str(error)) from None
    if variable not in (None, _field(ds)):
        raise InputError(f"forecasts {url} hold {_field(ds)} alone, not {variable}: leave --variable out")
    with damage_named(url, observed):
        panels = _forecast_panels(ds, observed, time, count)
    return _save(panels, _labelled(ds, _field(ds)), path, _aspect(ds))


# rain rates in other units, drawn in mm/h on the rain scale (a kg m-2 s-1 precipitation_flux, as NWP and
# reanalyses give it, was drawn as a generic field, dry dark purple); a kg m-2 of water is a mm. Only for
# a field that says it is precipitation: an evaporation flux has the same units
RAIN_RATES_PER_MM_H = {"kg m-2 s-1": 3600.0, "mm s-1": 3600.0, "mm min-1": 60.0}
RAIN_WORDS = ("precip", "rain", "snow")


def _units(ds, name: str) -> str:
    return " ".join(str(ds[name].attrs.get("units", "")).split())


def _rate(ds, name: str) -> float:
    """The factor from ``name``'s units to mm/h when it is precipitation in another rate's units, else 1."""
    said = " ".join(str(ds[name].attrs.get(key, "")) for key in ("standard_name", "long_name")) + f" {name}"
    if not any(word in said.lower() for word in RAIN_WORDS):
        return 1.0
    return RAIN_RATES_PER_MM_H.get(_units(ds, name), 1.0)


def _labelled(ds, name: str) -> tuple[str, str]:
    """A field's name and units, as its maps label it (precipitation in another rate's units: mm/h, see
    :func:`_rate`)."""
    return name, PRECIP.units if _rate(ds, name) != 1.0 else _units(ds, name)


def _variable(url: str, wanted: str | None) -> str:
    """The archive's variable ``wanted`` (default: the first it lists, as `nowcast summary` does)."""
    held = [field.name for field in read_info(url).fields]
    if wanted is None:
        return held[0]
    if wanted not in held:
        raise InputError(f"{url} holds no variable {wanted!r}; its variables: {', '.join(held)}")
    return wanted


def _field(ds) -> str:
    """The first gridded variable of an archive or forecast store."""
    return next(str(name) for name, var in ds.data_vars.items() if var.dims[-2:] == ("y", "x"))


def _pick(times: np.ndarray, usable: np.ndarray, time: str | None, what: str) -> int:
    """The index of ``time`` (or of the newest usable time) on ``times``."""
    if time is None:
        if not usable.any():
            raise InputError(f"no {what} to show yet")
        return int(np.flatnonzero(usable)[-1])
    wanted = parse_time(time, "--time")
    hits = np.flatnonzero(times == wanted)
    if not hits.size or not usable[hits[0]]:
        if not usable.any():
            raise InputError(f"no {what} to show yet")
        held = times[usable]  # not every time between the first and the last may be held
        before, after = held[held < wanted], held[held > wanted]
        nearest = ([f"{utc_stamp(before[-1])} before it"] if before.size else []) + (
            [f"{utc_stamp(after[0])} after it"] if after.size else [])
        raise InputError(f"no {what} at {time}; the nearest: {' and '.join(nearest)}, of {len(held)} from "
                         f"{utc_stamp(held[0])} to {utc_stamp(held[-1])}")
    return int(hits[0])


def _archive_panels(url: str, ds, name: str, time: str | None, count: int) -> list[list[tuple[np.ndarray,
                                                                                           str]]]:
    """The ``count`` valid frames of variable ``name`` up to ``time``, one step each."""
    valid = ds[VALID].values
    end = _pick(ds["time"].values, valid, time, f"valid frame in {url}")
    picks = np.flatnonzero(valid[: end + 1])[-count:]
    return [[(_frame(url, ds, name, int(i)), utc_stamp(ds["time"].values[i]) + _missing_before(picks, n))]
            for n, i in enumerate(picks)]


def _frame(url: str, ds, name: str, index: int) -> np.ndarray:
    """Frame ``index`` of ``name`` of archive ``url`` as its map draws it: checked as stored, north up,
    a rain rate in mm/h."""
    return _rate(ds, name) * north_up(ds, stored(url, name, index, ds[name][index].values))


def _missing_before(picks: np.ndarray, n: int) -> str:
    """A title's note of the frames missing between pick ``n`` and the one before it (the panels sat side
    by side as if consecutive)."""
    gap = int(picks[n] - picks[n - 1] - 1) if n else 0
    return f"\n({counted(gap, 'frame')} missing before)" if gap else ""


def _forecast_panels(ds, archive: str, time: str | None, count: int | None) -> list[list[tuple[np.ndarray,
                                                                                             str]]]:
    """The forecast of one init time beside the observation: a step per lead (observed, forecast), for
    ``count`` leads spread from the first to the last (every lead without a count)."""
    from nowcast.pipelines.stores.forecasts import MODEL_VERSION, WRITTEN

    name, written, inits = _field(ds), ds[WRITTEN].values, ds["init_time"].values
    observed = open_archive(archive)
    seen = observed["time"].values[observed[VALID].values]
    # by default the newest forecast whose every lead has been observed, so the two can be compared
    compared = written & (inits + ds["lead_time"].values[-1] <= (seen[-1] if seen.size else inits[0]))
    i = _pick(inits, written, time, "written forecast") if time or not compared.any() else \
        int(np.flatnonzero(compared)[-1])
    init, model = inits[i], ds.attrs.get("model_name", "forecast")
    rows, leads = [], ds["lead_time"].values
    shown = range(len(leads)) if count is None or count >= len(leads) else \
        np.unique(np.round(np.linspace(0, len(leads) - 1, count)).astype(int))
    for k in shown:
        lead = leads[k]
        valid_time = init + lead
        minutes = int(lead / np.timedelta64(1, "m"))
        hits = np.flatnonzero(observed["time"].values == valid_time)
        seen_then = bool(hits.size and observed[VALID].values[hits[0]])
        truth = (north_up(observed, stored(archive, name, int(hits[0]),
                                                observed[name][int(hits[0])].values)) if seen_then else
                 np.full(ds[name].shape[-2:], np.nan))
        later = valid_time > observed["time"].values[-1]
        unseen = "" if seen_then else " (not yet)" if later else " (missing)"
        rows.append([(truth, f"observed {utc_stamp(valid_time)}{unseen}"),
                     (north_up(ds, ds[name][i, k].values), f"{model} {ds[MODEL_VERSION].values[i]}\n"
                                                           f"from {utc_stamp(init)[11:16]}, +{minutes} min")])
    return rows
