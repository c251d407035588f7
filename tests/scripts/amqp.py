"""An AMQP 0-9-1 client that shares no code with Herald (pika), for the destination tests.

  amqp.py URL declare EXCHANGE QUEUE BINDING   a durable queue bound to a durable topic exchange
                                               ("" : the default exchange, no binding needed)
  amqp.py URL purge QUEUE                      empties QUEUE
  amqp.py URL drain QUEUE                      every message in QUEUE, acked, one JSON line each:
                                               {"headers": {...}, "body": "..."}; properties come
                                               as amqp-* headers
"""
import json
import sys

import pika


def main():
    url, command, *args = sys.argv[1:]
    # A broker just restarted opens its port before it takes AMQP connections: try for 30 s.
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 30
    parameters.retry_delay = 1
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    if command == "declare":
        exchange, queue, binding = args
        channel.queue_declare(queue=queue, durable=True)
        if exchange:
            channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
            channel.queue_bind(queue=queue, exchange=exchange, routing_key=binding)
    elif command == "drain":
        (queue,) = args
        while True:
            method, props, body = channel.basic_get(queue=queue, auto_ack=False)
            if method is None:
                break
            headers = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in (props.headers or {}).items()}
            headers["amqp-message-id"] = props.message_id or ""
            headers["amqp-type"] = props.type or ""
            headers["amqp-content-type"] = props.content_type or ""
            headers["amqp-delivery-mode"] = str(props.delivery_mode or "")
            headers["amqp-timestamp"] = str(props.timestamp or "")
            headers["amqp-routing-key"] = method.routing_key
            print(json.dumps({"headers": headers, "body": body.decode()}))
            channel.basic_ack(method.delivery_tag)
    elif command == "purge":
        (queue,) = args
        channel.queue_purge(queue=queue)
    else:
        sys.exit(f"unknown command {command}")
    connection.close()


if __name__ == "__main__":
    main()
