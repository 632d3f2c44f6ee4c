"""Schemas and Zarr stores: one module per store type, shared by its writers and readers.

Imports nothing of nowcast's above this layer, and no Beam, Keras or Prefect.
"""

from nowcast.pipelines.stores.archive import (
    PRECIP,
    ArchiveDescription,
    ArchiveError,
    ArchiveInfo,
    FieldSpec,
    create_archive,
    extend_time,
    open_archive,
    read_info,
    valid_flags,
    write_block,
)
from nowcast.pipelines.stores.forecasts import (
    ForecastStoreError,
    StoreIdentity,
    StoreInfo,
    ensure_store,
    open_forecasts,
    read_store_info,
    write_forecast,
    written_flags,
)
from nowcast.pipelines.stores.grid import Grid
from nowcast.pipelines.stores.groups import StoreError, exists, open_group, zarr_store
from nowcast.pipelines.stores.timeaxis import format_time_step, parse_time_step, step_minutes
from nowcast.pipelines.stores.windows import (
    SPLITS,
    WindowsError,
    WindowsLayout,
    WindowsStore,
    create_windows_store,
    describe_archive,
    fingerprint,
)

__all__ = [
    "PRECIP", "SPLITS", "ArchiveDescription", "ArchiveError", "ArchiveInfo", "FieldSpec",
    "ForecastStoreError", "Grid", "StoreError", "StoreIdentity", "StoreInfo", "WindowsError",
    "WindowsLayout", "WindowsStore", "create_archive", "create_windows_store", "describe_archive",
    "ensure_store", "exists", "extend_time", "fingerprint", "format_time_step", "open_archive",
    "open_forecasts", "open_group", "parse_time_step", "read_info", "read_store_info", "step_minutes",
    "valid_flags", "write_block", "write_forecast", "written_flags", "zarr_store",
]
