"""A stand-in for the one piece of scikit-learn the reference Open-Unmix recipe uses
(``sklearn.preprocessing.StandardScaler``'s ``partial_fit``, ``mean_`` and ``scale_``).

``scripts/gpu_benchmark.py`` puts its folder on the reference run's path only where scikit-learn
is not installed, so that the reference's training throughput is measured either way;
``tests/test_reference_fallback.py`` checks it against scikit-learn's own.
"""
