"""pytest-benchmark timings of the K = 5000 evaluation (``tox -e benchmark``)."""
