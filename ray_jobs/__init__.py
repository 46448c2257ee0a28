"""The Ray side of celeray: read inputs, transform them, write partitioned Parquet.

Runs on Ray nodes without Celery: it imports nothing from ``tasks`` and, from the core,
only the bottom layer, which needs neither Celery nor settings (the contracts of
``[tool.importlinter]`` in ``pyproject.toml``). Import the submodules directly
(``ray_jobs.process``, ``ray_jobs.dispatcher``...); this package imports none of them, so
loading it does not pull in Ray.
"""

__all__: list[str] = []
