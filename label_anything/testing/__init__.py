"""Helpers shared by the test suite and the benchmarks (``bench/``): no test-framework dependency.

``label_anything.testing.scenes``: photos with one pasted object whose mask is known exactly.
"""
