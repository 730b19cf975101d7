"""Configuration, one entry point per file format: ``settings`` (the server's own settings),
``model`` (the frozen model-config dataclasses), ``pbtxt`` (reads a Triton ``config.pbtxt``),
``validation`` (completes and checks a model config at load) and ``deployment_file`` (reads a
model's ``deployment.yaml``)."""
