"""esmm: Entire Space Multi-task Model for post-click conversion rate estimation.

Python API (every CLI command is a thin layer over these):

- :func:`esmm.synth.make_world` / ``esmm synth``: a simulated world with ground truth
- :func:`esmm.importer.import_logs` / ``esmm import``: your own raw logs -> dataset
- :func:`esmm.api.train` / ``esmm train``; :func:`esmm.api.evaluate` / ``esmm evaluate``
- :func:`esmm.predict.predict_file` / ``esmm predict``
"""

from esmm import cpu as _cpu

# How idle OpenMP threads wait is fixed when torch loads, so it is chosen here, before
# any esmm module imports torch: spin when every core is free, sleep when another process
# is busy (measured 2x either way; see esmm/cpu.py). A user's own OMP_WAIT_POLICY wins.
_cpu.choose_wait_policy()

__version__ = "0.1.0"
