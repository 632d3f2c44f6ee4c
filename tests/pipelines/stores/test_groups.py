"""Store access on an object store sees what other processes wrote meanwhile (moto's real S3 API)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from nowcast.pipelines.stores.groups import created_whole, exists, filesystem, open_group, zarr_store


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


def _build(url: str, values: dict[str, int]) -> None:
    root = zarr.open_group(zarr_store(url), mode="w", zarr_format=3)
    for name, value in values.items():
        root.create_array(name, shape=(2,), dtype="int64")[:] = value


def _read(url: str) -> dict[str, int]:
    return {name: int(array[0]) for name, array in open_group(url).arrays()}


@pytest.mark.fault("stores", "a store replaced by a build that fails part way, or one that completes "
                   "(the windows job's overwrite), on disk and on S3",
                   "readers see the previous store until the new one is whole; a failed build leaves the "
                   "previous store as it was; no member of the previous store is mixed into the new one")
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_replaced_store_appears_whole_and_a_failed_build_keeps_the_previous_one(where, tmp_path, request):
    base = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    url = f"{base}/w.zarr"
    with created_whole(url) as staging:
        _build(staging, {"kept": 1, "only_old": 1})

    def stopped_part_way() -> None:
        with created_whole(url, replace=True) as staging:
            _build(staging, {"kept": 2})
            assert _read(url) == {"kept": 1, "only_old": 1}  # the build is not visible yet
            raise RuntimeError("stopped part way")

    with pytest.raises(RuntimeError, match="stopped"):
        stopped_part_way()
    assert _read(url) == {"kept": 1, "only_old": 1}
    with created_whole(url, replace=True) as staging:
        _build(staging, {"kept": 2})
    assert _read(url) == {"kept": 2}
    fs, path = filesystem(base)
    assert [name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(path, detail=False)] == ["w.zarr"]
    assert not any("only_old" in name for name in fs.find(f"{path.rstrip('/')}/w.zarr"))


@pytest.mark.fault("stores", "Ctrl-C or SIGTERM while a replaced store is published on S3 (the windows "
                   "job's overwrite: the previous store deleted, the new one being copied)",
                   "the publish finishes, then the command stops (the previous store was gone and the new "
                   "one half copied: no windows store at all)")
def test_an_interrupt_waits_for_the_publish_on_an_object_store(s3_bucket, monkeypatch):
    import os
    import signal

    from nowcast.pipelines.stores import groups

    url = f"{s3_bucket}/published.zarr"
    with created_whole(url) as staging:
        _build(staging, {"kept": 1, "only_old": 1})
    publish = groups._copy_root_last

    def interrupted(*args, **kwargs) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives after the previous store's deletion starts
        publish(*args, **kwargs)

    monkeypatch.setattr(groups, "_copy_root_last", interrupted)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # an xdist worker ignores SIGINT
    try:
        with pytest.raises(KeyboardInterrupt), created_whole(url, replace=True) as staging:
            _build(staging, {"kept": 2})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert _read(url) == {"kept": 2}


@pytest.mark.fault("stores", "`check`, `show` or any reader of a store whose publish on S3 stopped part way "
                   "(the endpoint lost mid-copy: the previous store gone, part of the new one copied)",
                   "named as a copy stopped part way, with the fix: rerun the command into the same path, "
                   "which publishes it whole (check called its members damaged: restore from a copy; the "
                   "readers said there was no store)")
def test_a_publish_stopped_part_way_is_named_with_its_fix(s3_bucket):
    import s3fs

    from nowcast.pipelines.stores.groups import PUBLISHING, StoreError
    from nowcast.pipelines.stores.integrity import check_store

    url = f"{s3_bucket}/published.zarr"
    with created_whole(url) as staging:
        _build(staging, {"kept": 1})
    fs, path = s3fs.S3FileSystem(), url.removeprefix("s3://")
    fs.pipe(f"{path}/{PUBLISHING}", b"")  # what a publish stopped part way leaves: the marker, no root
    fs.rm(f"{path}/zarr.json")
    with pytest.raises(StoreError, match=r"a copy that stopped part way while it was published .* rerun the "
                                         r"command that writes it, into the same path"):
        check_store(url)
    with pytest.raises(StoreError, match=r"a copy that stopped part way while it was published"):
        open_group(url)  # every reader's way in
    with created_whole(url, replace=True) as staging:  # the rerun
        _build(staging, {"kept": 2})
    assert _read(url) == {"kept": 2}


@pytest.mark.fault("stores", "a store URL a slash short (`s3:/bucket/a.zarr`), with an empty, `.` or "
                   "`..` segment, with a wildcard (`s3://bucket/run[1].zarr`), a bucket's root, or an "
                   "upper-case scheme (`S3://`), or a slash too many (`s3:///bucket`), in a form or the API",
                   "refused naming the URL meant or the fix (the first created a local folder `s3:`, exit "
                   "0; an empty segment crashed the store lock, then made every rerun spin at full CPU for "
                   "ever; `.`/`..` made a second store under those keys, exit 0; a wildcard left a garbled "
                   "store or a traceback; a bucket's root was said not to exist; `S3://` was read as a store "
                   "whose root metadata cannot be read; `s3:///` wrote keys without their slash, which broke "
                   "the store of the right URL for good)")
@pytest.mark.parametrize(("url", "meant"), [("s3:/bucket/a.zarr", "the URL s3://bucket/a.zarr"),
                                            ("s3://bucket//a.zarr", "write s3://bucket/a.zarr"),
                                            ("s3:///bucket/a.zarr", "a slash too many\\): write "
                                                                    "s3://bucket/a.zarr"),
                                            ("gs://bucket/x//a.zarr/", "write gs://bucket/x/a.zarr"),
                                            ("s3://bucket/sub/../a.zarr", "write s3://bucket/a.zarr"),
                                            ("s3://bucket/./a.zarr", "write s3://bucket/a.zarr"),
                                            ("s3://bucket/run[1].zarr", r"holds one of \* \? \[ \]"),
                                            ("s3://bucket/a?b.zarr", "name it without them"),
                                            ("s3://bucket/", "a bucket's root, .* e.g. s3://bucket/archive.zarr"),
                                            ("S3://bucket/a.zarr", "scheme in lower case: s3://bucket/a.zarr")])
def test_a_misspelt_store_url_is_refused(url, meant, tmp_path, monkeypatch):
    from nowcast.flows.params import WindowsParams
    from nowcast.pipelines.stores.groups import StoreError, check_url
    from nowcast.pipelines.stores.lock import lock_url

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=meant):
        zarr_store(url)
    with pytest.raises(StoreError, match=meant) as raised:
        open_group(url)
    assert "cannot be read" not in str(raised.value)  # said of the URL, not as unreadable root metadata
    with pytest.raises(StoreError, match=meant):  # every writer takes the lock beside the store
        lock_url(url)
    if "root" not in meant:  # a registry or a work folder may be a bucket's root
        with pytest.raises(ValueError, match=meant):  # pydantic's ValidationError of the form
            WindowsParams(archive=url, windows=str(tmp_path / "w.zarr"))
    assert check_url("s3://bucket/a.zarr/") == "s3://bucket/a.zarr/"
    assert check_url("C:/data/a.zarr") == "C:/data/a.zarr"  # a drive letter is a path
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fault("train", "`train --models` in an S3 bucket that does not exist",
                   "refused before the windows are cut (it trained, verified and printed the table, then "
                   "failed saving the model); the check creates no bucket")
def test_a_registry_that_cannot_be_written_is_found_before_the_work(s3_bucket, tmp_path):
    import s3fs

    from nowcast.pipelines.stores.groups import StoreError, check_writable, object_store_problem

    check_writable(f"{s3_bucket}/models", "the model registry")
    check_writable(str(tmp_path / "new" / "models"), "the model registry")
    assert not (tmp_path / "new").exists()  # nothing created: a refusal after it would leave it
    missing = f"{s3_bucket}-missing"
    with pytest.raises(FileNotFoundError) as raised:
        check_writable(f"{missing}/models", "the model registry")
    assert object_store_problem(raised.value).startswith("the bucket does not exist")
    assert not s3fs.S3FileSystem().exists(missing.removeprefix("s3://"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(StoreError, match=r"the model registry .*a_file/models cannot be written "
                                          r"\(.*a_file is a file\)"):
        check_writable(str(tmp_path / "a_file" / "models"), "the model registry")


@pytest.mark.fault("flows", "a work folder, registry or picture folder inside a zarr store on S3 "
                   "(`evaluate --workdir s3://b/archive.zarr/ev`)",
                   "refused as on disk (accepted: the store then warned on every read)")
def test_an_output_inside_a_store_on_s3_is_refused(s3_bucket):
    from nowcast.flows.params import _apart
    from nowcast.pipelines.stores.groups import enclosing_store

    url = f"{s3_bucket}/a/archive.zarr"
    _build(url, {"x": 1})
    assert enclosing_store(f"{url}/ev") == url
    assert enclosing_store(url) == url
    assert enclosing_store(f"{s3_bucket}/a/other") is None
    with pytest.raises(ValueError, match=rf"workdir {url}/ev lies inside the zarr store {url}"):
        _apart({"archive": url, "workdir": f"{url}/ev"})
    with pytest.raises(ValueError, match=rf"models {url} is a zarr store"):
        _apart({"models": url})
    _apart({"archive": url, "workdir": f"{s3_bucket}/a/ev"})
