"""Writers of one store take turns (nowcast.flows.concurrency), on a real Prefect server."""

from __future__ import annotations

import threading

import pytest

from nowcast.flows.concurrency import slot_name, store_slot


@pytest.mark.fault("flows", "two flows writing one forecast store at once",
                   "one at a time (Prefect limit per store); other stores not blocked")
def test_one_writer_at_a_time_per_store_and_stores_do_not_block_each_other(prefect_server, tmp_path):
    store, other = str(tmp_path / "forecasts.zarr"), str(tmp_path / "other.zarr")
    assert slot_name(store) != slot_name(other)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store_slot(store):
            inside.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(60)
        with pytest.raises(TimeoutError), store_slot(store, timeout_s=2):
            pytest.fail("a second writer got the store's slot while the first held it")
        with store_slot(other, timeout_s=10):  # another store is free
            pass
    finally:
        release.set()
        holder.join(60)
    with store_slot(store, timeout_s=10):  # released: the next writer's turn
        pass


@pytest.mark.fault("flows", "a backfill interrupted (Ctrl-C) on Prefect's temporary server, then rerun",
                   "the rerun takes no slot there (that server never frees an interrupted run's), so it "
                   "does not wait for ever; the store lock still keeps writers apart")
def test_no_slot_is_taken_on_prefects_temporary_server(tmp_path):
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE, temporary_settings

    from nowcast.flows.concurrency import on_a_server

    # with temporary servers barred, any call to the API would fail: the slot makes none
    with temporary_settings({PREFECT_SERVER_ALLOW_EPHEMERAL_MODE: False}, restore_defaults={PREFECT_API_URL}):
        assert not on_a_server()
        with store_slot(str(tmp_path / "forecasts.zarr"), timeout_s=1):
            pass
