"""Test-only: makes a process pause at a chosen chunk write, for kill tests that must not race the job.

A test puts this folder on ``PYTHONPATH`` of the process it starts (and so of
that process's own children: Beam's multiprocess workers, a flow's
subprocesses) and sets ``NOWCAST_TEST_PAUSE`` to a JSON object
(:func:`tests.pause.pause_env` builds it). Python imports this module at
start-up, and it wraps zarr's ``LocalStore.set`` so that, after the
``after``-th completed write of a key matching ``pattern`` in one process,
that process claims ``signal`` (an exclusive create: only the first process
to get there pauses), writes its pid into it and blocks: until ``go`` exists,
or for good (the test then kills it). The pause depends on how many writes
were done, never on how fast.
"""

import os

if os.environ.get("NOWCAST_TEST_PAUSE"):
    from tests.pause import install_from_environment

    install_from_environment()
