"""Store access on an object store sees what other processes wrote meanwhile (moto's real S3 API)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from nowcast.pipelines.stores.groups import exists, open_group


@pytest.mark.fault("stores", "a long-lived reader and a store another process writes on S3",
                   "no stale listing: the reader sees the new store")
def test_a_long_lived_reader_sees_stores_and_arrays_that_another_process_writes(s3_bucket):
    """A reader once listed a store while its first writer was creating it, and fsspec's listings
    cache hid the arrays written afterwards from every later open in that process (a life-cycle
    test polled a half-created archive for ten minutes)."""
    import s3fs

    url = f"{s3_bucket}/archive.zarr"
    other_process = s3fs.S3FileSystem(skip_instance_cache=True, asynchronous=True)
    writer_store = zarr.storage.FsspecStore(other_process, path=url.removeprefix("s3://"))
    assert not exists(url)
    root = zarr.open_group(writer_store, mode="w", zarr_format=3)
    root.create_array("x", shape=(3,), dtype="float64")
    assert exists(url)
    assert sorted(open_group(url).array_keys()) == ["x"]  # this process lists the half-made store
    root.create_array("valid", shape=(3,), dtype="bool")[:] = np.array([True, False, True])
    group = open_group(url)
    assert sorted(group.array_keys()) == ["valid", "x"]
    assert group["valid"][:].tolist() == [True, False, True]
