"""The Ray side of celeray: read inputs, transform them, write partitioned Parquet.

Runs on Ray nodes without Celery: it imports nothing from ``tasks`` and, from the core,
only modules that need neither Celery nor settings (``celeray.errors``, ``sizes``,
``arrow_types``, ``roots``, ``fsoptions``, ``durable``, ``sql_policy``). Import the
submodules directly
(``ray_jobs.process``, ``ray_jobs.dispatcher``...); this package imports none of them, so
loading it does not pull in Ray.
"""

__all__: list[str] = []
