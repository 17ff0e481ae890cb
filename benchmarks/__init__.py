"""
Load and scale benchmarks for tallygate; never part of the test run.

``python -m benchmarks.run`` is the one command that compares the gateway with
a bare relay; README.md beside this file lists the others.
"""
