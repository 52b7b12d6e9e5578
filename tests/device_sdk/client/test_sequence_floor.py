"""The SDK persists a sequence floor across reboots: a device never reuses a batch seq.

The counter file holds a reservation; the outbox now also keeps one past the highest seq it was
ever given, acknowledged entries included. Before, a device whose counter file was lost (or
restored from an old backup) and whose clock was behind numbered from the clock again and
reused seqs the server had stored, which it dead-letters as SEQUENCE_REUSED.
"""

from __future__ import annotations

from pathlib import Path

from device_sdk.client import DeviceClient
from device_sdk.client.batching import SequenceCounter
from device_sdk.client.identity import DeviceIdentity, MqttCredential
from device_sdk.client.outbox import Outbox
from device_sdk.protocol.events import Event, decode_message
from device_sdk.protocol.status import Capabilities

FUTURE = 4_000_000_000_000  # a seq the device used while its clock was far ahead


def test_the_outbox_remembers_the_highest_seq_even_once_acknowledged(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as box:
        assert box.seq_floor == 0
        entry = box.put(FUTURE, b"x")
        box.put(17, b"y")  # never lowers it
        assert box.ack(entry)
        assert box.seq_floor == FUTURE + 1
    with Outbox(tmp_path / "o.sqlite3") as box:
        assert box.seq_floor == FUTURE + 1


def test_the_counter_never_starts_below_the_floor(tmp_path: Path) -> None:
    counter = SequenceCounter(tmp_path / "sequence", clock=lambda: 1_700_000_000.0,
                              floor=FUTURE + 1)
    assert counter.next(at_least=1_700_000_000_000) == FUTURE + 1


def test_a_rebooted_client_with_a_lost_counter_file_numbers_above_what_it_sent(
    tmp_path: Path,
) -> None:
    identity = DeviceIdentity(
        device_id="dev-seq", hardware="stm32f746", server="http://unused",
        mqtt=MqttCredential("mqtt://127.0.0.1:9", "dev-seq", "x", None))
    caps = Capabilities("fw", "tflm", ["FULLY_CONNECTED"], 1 << 16, 1 << 20, 32)

    def boot() -> DeviceClient:
        return DeviceClient(identity, state_dir=tmp_path, capabilities=caps, batch_events=1)

    client = boot()
    client.record(Event(FUTURE, 1, 200, 5))  # the clock was far ahead then
    sent = [e for e in client.outbox.pending(limit=10)]
    client.outbox.ack(sent[0].id)  # the broker took it; the server stored it
    client.close()
    (tmp_path / "sequence").unlink()  # lost: wiped, or an older backup restored

    client = boot()  # the clock is right again: far behind FUTURE
    client.record(Event(1_765_000_000_000, 2, 210, 5))
    seqs = [decode_message(e.payload).seq for e in client.outbox.pending(limit=10)]
    client.close()
    assert seqs and min(seqs) > sent[0].seq >= FUTURE
