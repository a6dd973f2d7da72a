"""The benchmark harness of issue 4: perper_lab next to Bytewax, streamz, a plain loop and raw Ignite.

``make bench`` (``python -m benchmarks.run``) writes ``benchmarks/RESULTS.md`` and
``benchmarks/throughput.png``; see ``run.py`` for the order of the runs.
"""
