"""esmm: Entire Space Multi-task Model for post-click conversion rate estimation.

Python API (every CLI command is a thin layer over these):

- :func:`esmm.synth.make_world` / ``esmm synth``: a simulated world with ground truth
- :func:`esmm.importer.import_logs` / ``esmm import``: your own raw logs -> dataset
- :func:`esmm.api.train` / ``esmm train``; :func:`esmm.api.evaluate` / ``esmm evaluate``
- :func:`esmm.predict.predict_file` / ``esmm predict``
"""

__version__ = "0.1.0"
