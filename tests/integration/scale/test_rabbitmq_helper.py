"""The RabbitMQ test helper itself: a broker on its own ports, whose durable data survive a restart."""

from __future__ import annotations

from pathlib import Path

import kombu

from tests.helpers.rabbitmq import RabbitMQServer, amqp_ready


def test_broker_keeps_a_persistent_message_across_a_restart_and_stops_clean(tmp_path: Path) -> None:
    broker = RabbitMQServer(tmp_path)
    queue = kombu.Queue("ainode-helper-check", kombu.Exchange("ainode-helper-check"), "k", durable=True)
    try:
        broker.start()
        with kombu.Connection(broker.url) as conn:
            conn.Producer().publish(
                {"job": 7}, exchange=queue.exchange, routing_key="k", declare=[queue], delivery_mode=2
            )
        broker.restart()
        with kombu.Connection(broker.url) as conn:
            message = queue(conn).get(no_ack=True)
            assert message is not None, broker.log_tail()
            assert message.payload == {"job": 7}
            assert queue(conn).get(no_ack=True) is None  # exactly one copy
        vhost = broker.add_vhost("ainode-other")
        assert vhost.endswith("/ainode-other")
        with kombu.Connection(vhost) as conn:
            conn.Producer().publish(
                {"job": 8}, exchange=queue.exchange, routing_key="k", declare=[queue], delivery_mode=2
            )
        with kombu.Connection(broker.url) as conn:
            assert queue(conn).get(no_ack=True) is None, "a virtual host's queues are its own"
    finally:
        broker.stop()
    assert not amqp_ready(broker.port)
    assert (tmp_path / "rabbitmq-logs" / "console.log").read_text().strip(), "the broker's log is kept for the test"
    assert not broker.dir.exists()
