"""Cross-client check with confluent-kafka-python's AvroSerializer / AvroDeserializer.

produce: writes one WorkloadRequest (Avro key and value) and prints its request id.
consume: reads one AllocationDecision and prints it as JSON.
"""
import json
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def main() -> int:
    mode, bootstrap, registry_url, topic = sys.argv[1:5]
    registry = SchemaRegistryClient({"url": registry_url})
    key_schema = (SCHEMAS / "workload_key.avsc").read_text()
    if mode == "produce":
        request_id = sys.argv[5]
        key_ser = AvroSerializer(registry, key_schema)
        value_ser = AvroSerializer(registry, (SCHEMAS / "workload_request.avsc").read_text())
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "partitioner": "murmur2_random"})
        value = {
            "request_id": request_id,
            "workload_id": "vm-py",
            "labels": {"client": "python"},
            "resources": {"cpu_millicores": 1500, "memory_bytes": 2147483648, "disk_io_bytes_per_s": 1048576},
            "requested_at": 1372636800123,
        }
        producer.produce(
            topic,
            key=key_ser({"workload_id": "vm-py"}, SerializationContext(topic, MessageField.KEY)),
            value=value_ser(value, SerializationContext(topic, MessageField.VALUE)),
        )
        if producer.flush(20) != 0:
            print("produce: not delivered", file=sys.stderr)
            return 1
        print(request_id)
        return 0
    if mode == "consume":
        value_de = AvroDeserializer(registry)
        key_de = AvroDeserializer(registry)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"py-{time.time()}", "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        deadline = time.time() + 30
        try:
            while time.time() < deadline:
                msg = consumer.poll(1.0)
                if msg is None or msg.error():
                    continue
                key = key_de(msg.key(), SerializationContext(topic, MessageField.KEY))
                value = value_de(msg.value(), SerializationContext(topic, MessageField.VALUE))
                print(json.dumps({"key": key, "value": value}, default=str))
                return 0
        finally:
            consumer.close()
        print("consume: nothing within 30 s", file=sys.stderr)
        return 1
    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
