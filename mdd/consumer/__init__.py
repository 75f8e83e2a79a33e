"""mdd-consumer: the SenpAI market-data consumer.

Subscribes to the daemon's events on NATS (``md.events.>``, queue group
``senpai-md``), keeps per-symbol state and a rolling trade window, computes 11
features and rule-based long/short signals, raises alerts, and publishes them
on ``senpai.features.{symbol}``, ``senpai.signals.{symbol}`` and
``senpai.alerts.{kind}``; serves ``/health``, ``/metrics``, ``/state/latest``,
``/features/latest`` and ``/stats`` over HTTP.

Embedding (``mdd demo``)::

    config = load_consumer_config(None, overrides={"nats.url": url, "http.port": 0})
    service = ConsumerService(config)
    await nursery.start(service.run)   # returns once subscribed
    ...
    service.request_stop()

Importing :mod:`mdd.consumer.service` imports trio-asyncio; the config module
does not.
"""

from .config import ConsumerConfig as ConsumerConfig
from .config import load_consumer_config as load_consumer_config
