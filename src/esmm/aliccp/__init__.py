"""Ali-CCP, the public data set of the ESMM paper: raw-format reader, preparer and generator.

- :mod:`esmm.aliccp.rawformat`: vectorised parser of raw lines
- :mod:`esmm.aliccp.prepare`: ``esmm aliccp prepare`` (raw files -> dataset directory)
- :mod:`esmm.aliccp.fake`: ``esmm aliccp fake-raw`` (generated raw files of realistic shape)
"""
