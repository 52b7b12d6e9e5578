"""Intake: the one place where device messages arrive, are decoded, checked and routed.

The worker runtime (``worker.MqttWorker``) receives from the broker's shared subscriptions;
``consumers.Consumers`` routes each message by channel; ``messages`` holds the contract every
message passes (decode with size caps and schema checks, a known, unrevoked device, or a
``Rejected`` with its wire reason, kept as a dead letter). The domains below store what
intake hands them and never see MQTT.
"""
