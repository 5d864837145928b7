"""Prefect 3 flows that orchestrate ``galaxy_models``: ingest, train, classify and export.

Each flow is a short story of typed tasks; the work itself lives in the library, which does not
import Prefect. `steps.PrefectSteps` runs the library's pipeline steps as Prefect tasks.
"""
