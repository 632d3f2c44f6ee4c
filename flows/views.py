"""Human-readable views of an archive: a text summary and a PNG of frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nowcast.errors import InputError
from nowcast.pipelines.stores.archive import VALID, open_archive, read_info


def archive_summary(url: str) -> str:
    """A few lines a user reads after an ingest: extent, grid, completeness, values."""
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


def plot_frames(url: str, path: str | Path, count: int = 4, field: str | None = None) -> Path:
    """Saves a PNG of ``count`` evenly spaced valid frames and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = read_info(url)
    name = field or info.fields[0].name
    ds = open_archive(url)
    valid_idx = np.flatnonzero(ds[VALID].values)
    if valid_idx.size == 0:
        raise InputError(f"{url} has no valid frame to plot; ingest frames first")
    picks = valid_idx[np.linspace(0, valid_idx.size - 1, min(count, valid_idx.size)).astype(int)]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks) + 1, 3.4), squeeze=False,
                             layout="constrained")
    units = ds[name].attrs.get("units", "")
    vmax = float(np.nanmax([np.nanmax(ds[name][int(i)].values) for i in picks]))
    for ax, i in zip(axes[0], picks, strict=True):
        frame = ds[name][int(i)]
        image = ax.imshow(frame.values, vmin=0, vmax=max(vmax, 1e-6), cmap="Blues")
        ax.set_title(str(np.datetime_as_string(frame.time.values, unit="m")))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), label=f"{name} [{units}]", shrink=0.9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
