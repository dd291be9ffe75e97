"""The event log: every event a user's window newly stores, kept for training, apart from the window.

The window (`{prefix}h:{user}`, the last SEQREC_MAX_HISTORY events) is what serving reads; the log
is what `seqrec snapshot` exports. The same script call that writes the window appends to the log
(app/stores/redis.py, APPEND_LUA), so an acknowledged event is in both or in neither, with the
same durability (AOF).

Layout, in Redis Streams (one entry per event, id = the arrival time in ms assigned by Redis):

- one Redis: one stream `{prefix}log`;
- a Redis Cluster: one stream per hash slot, `{prefix}log:{<slot tag>}`, where the slot tag is the
  smallest non-negative integer, written in decimal, whose CRC16 falls in the slot (`slot_tag`).
  A script may only touch keys of one slot, and a user's window lives in the slot of its `{user}`
  tag, so the log key must be in that slot too: a stream per user would be millions of keys, a
  stream per master cannot follow a slot when it moves (resharding, failover). A stream per slot is
  at most 16,384 keys, moves with its slot, and is read by scanning each master for `{prefix}log:*`.

Entry fields: `u` the user id, `m` the event id, US, the item id, `t` the event time (epoch
seconds, as the window's score), and `y` the event type, only when it is not the default type
(SEQREC_DEFAULT_EVENT_TYPE), so entries of untyped events are exactly as before types existed and
a reader that does not know `y` still reads them. (The window's member of a typed event also holds
the type, app/stores/base.py; the log keeps `m` in its old form and the type in `y`.)

Retention: each XADD trims its stream with `MINID ~` to the entries that arrived within
`retention_s` (approximately: Redis drops whole nodes of up to 100 entries, once all of them are
older).

Replays are not logged twice within the retention. An event the window still holds is recognised
by the window (ZADD NX). One it does not (older than every event kept, or the window empty: a new
user, or one whose window expired) is looked up in a per-user index of the events logged: 12 hex
digits of the SHA-1 of each member, appended to one string per retention period,
`{prefix}lx:{user}:{period}` (cluster: `{prefix}lx:{{user}}:{period}`), which expires two periods
after it began, so an event is remembered at least `retention_s` after it was logged, as long as
the log may hold it. The index is read only for such events, never on the common path. A replay
carrying another time than its first copy, once that copy has left the window, lands inside the
window as a new event (the window's contract) and is logged as one (`seqrec prepare` drops it by
its event id).
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.settings import Settings
from app.stores.base import SEP, Event, LoggedEvent

STREAM = "log"  # {prefix}log (one Redis) or {prefix}log:{<slot tag>} (a cluster)
INDEX = "lx"  # {prefix}lx:{user}:{period}: digests of the user's events logged in that period
# 12 hex digits of SHA-1 per indexed event (48 bits: a false match is ~1e-10 per look); the script
# has the 12 written in.
SLOTS = 16384


@dataclass(frozen=True, slots=True)
class EventLog:
    """The log's settings (SEQREC_EVENT_LOG_RETENTION_S) and the arguments the append script takes."""

    retention_s: int

    def min_id(self, now: float) -> str:
        """XADD's MINID: entries that arrived before now - retention may go."""
        return str(max(0, int((now - self.retention_s) * 1000)))

    def index_keys(self, base: str, now: float) -> tuple[str, str, int]:
        """The index of this period and of the one before (both are read), and when this one expires."""
        period = int(now // self.retention_s)
        return f"{base}:{period}", f"{base}:{period - 1}", (period + 2) * self.retention_s


def default_log() -> EventLog:
    """The log as the settings' defaults have it (what a store built without an `event_log` keeps)."""
    return EventLog(int(Settings.model_fields["event_log_retention_s"].default))


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def entry_event(fields: dict[bytes, bytes] | dict[str, str]) -> Event:
    """A stream entry's fields -> the event (raw bytes or decoded strings)."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    event_id, item_id = f["m"].rsplit(SEP, 1)
    return Event(f["u"], item_id, float(f["t"]), event_id, f.get("y"))


def glob_escape(s: str) -> str:
    """SCAN MATCH is a glob: a prefix containing * ? [ ] or \\ must match itself only."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def crc_slot(tag: str) -> int:
    """The Redis Cluster slot of a hash tag (CRC16/XMODEM mod 16384)."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    tags: list[str | None] = [None] * SLOTS
    left, n = SLOTS, 0
    while left:  # ~110,000 integers cover every slot (~0.05 s, once per process)
        s = crc_slot(str(n))
        if tags[s] is None:
            tags[s] = str(n)
            left -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(slot: int) -> str:
    """The smallest non-negative integer (decimal) whose CRC16 is in `slot`: the log stream's hash tag."""
    return _slot_tags()[slot]


async def read_stream(client: Redis, name: str, count: int = 1000) -> AsyncIterator[LoggedEvent]:
    """Every entry of one log stream, oldest first, `count` per round trip."""
    start = "-"
    while True:
        entries: list[Any] = await client.xrange(name, min=start, max="+", count=count) or []
        for entry_id, fields in entries:
            log_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            yield LoggedEvent(log_id, entry_event(fields))
        if len(entries) < count:
            return
        start = "(" + log_id  # exclusive: the next entry after the last one read
