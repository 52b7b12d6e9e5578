"""The lab shared by the tests and the benchmarks: real processes and realistic inputs.

* :mod:`testkit.broker`: a real Mosquitto with dynamic security, and :class:`~testkit.broker.Probe`,
  a synchronous MQTT 5 client (also pytest fixtures: ``broker``, ``probe``)
* :mod:`testkit.worker`: the real ingest worker as a subprocess (pytest fixture ``worker``)
* :mod:`testkit.traffic`: realistic event streams, their JSON baseline, and publishers
* :mod:`testkit.stored`: compare what the worker stored with what was sent
* :mod:`testkit.model_factory`: small real int8 models (TensorFlow, imported lazily)

Installed with the project (``pyproject.toml``), so ``bench/`` imports it without touching
``sys.path``. It may import the server and the SDK; neither imports it.
"""
