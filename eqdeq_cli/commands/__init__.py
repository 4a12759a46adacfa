"""The ``eqdeq`` commands: each parses its command line, calls one library function and reports.

* :mod:`.train`, :mod:`.eval`, :mod:`.analyze` — Hydra apps on ``configs/{train,eval,analyze}.yaml``
  over :mod:`eqdeq_cli.runs`; argv handling and the failure policy are :mod:`.hydra_app`'s.
* :mod:`.collect` — an argparse command over :mod:`eqdeq_cli.sweeps`.

Each module imports only what ``--help`` needs; the library (torch and everything built on
it) is imported when a job runs.
"""
