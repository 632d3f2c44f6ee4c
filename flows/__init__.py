"""Prefect flows (ingest, train, forecast, backfill, evaluate, demo), their parameter forms,
artifacts, deployments and the ``nowcast`` command line: thin shells over the jobs.
"""
