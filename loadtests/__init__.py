"""Load tests and benchmarks for Sluice. Clients of the server only: nothing here imports
``server``; servers run as subprocesses and are reached over gRPC (through :mod:`sluice.clients`).

* ``python -m loadtests.bench``: the benchmark (ORT in-process ceiling, Python gRPC ceiling,
  Sluice unary and streaming, memory growth, perf_analyzer when installed).
* ``python -m loadtests.ceiling``: the minimal grpc.aio servicer the benchmark compares against.
* ``python -m loadtests.loadgen``: one closed-loop load generator process.
* ``python -m loadtests.auth_latency`` and ``python -m loadtests.auth_instructions``: where the
  c=1 time of TLS and tokens goes (latency and CPU per call; instructions per call).

Helpers: :mod:`loadtests.models` (bundled model specs and inputs), :mod:`loadtests.ortbench`
(in-process ONNX Runtime), :mod:`loadtests.procs` (server and generator subprocesses),
:mod:`loadtests.perfanalyzer`, :mod:`loadtests.report` (medians, ratios, table, JSON, plot).
"""
