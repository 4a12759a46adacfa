"""Sweep tooling: reading a sweep's job directories, the results table and the method
comparison (``eqdeq collect``), and the Hydra callback that reports failed jobs.

* :mod:`.jobs` — one job directory → :class:`~.jobs.JobResult`
* :mod:`.table` — jobs grouped by the swept overrides, mean ± std over seeds
* :mod:`.compare` — the method comparison table and figure (``collect --figure``)
* :mod:`.callback` — :class:`~.callback.SweepFailureReport` (``configs/hydra/default.yaml``)
"""
