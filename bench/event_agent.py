"""A bench-only agent process: the real AgentApp plus a stdin control channel that publishes events.

Why: events come only from inside the agent (there is no publish RPC, on purpose), so measuring
WatchEvents end to end needs an agent that can be told to publish. The control channel is this
process's stdin, not an RPC, so nothing is added to the agent's API and no magic keys are needed.

Run with the sidecar's own flags: `python -m bench.event_agent --socket /tmp/x.sock --port -1
--metrics-port -1`. Commands (one per line on stdin), answers (one JSON line on stdout):

    publish N CHUNK   -> {"n": N, "t0": ..., "t1": ..., "watchers": W}
        publishes N EVENT_TYPE_CUSTOM events through app.events.publish, yielding to the event loop
        after every CHUNK events (as a busy agent's loop would), then one end-marker event
        (attribute end=1) that the consumer uses to close the round. t0/t1 are time.monotonic()
        around the N events (the marker excluded).
    quit              -> drains and exits 0 (so does EOF on stdin, or SIGTERM).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.app import AgentApp
from perfpilot_agent.config import load_settings


async def publish(app: AgentApp, n: int, chunk: int) -> dict[str, float]:
    """Publish n events in chunks that yield to the loop; returns timings."""
    events = app.events
    custom = pb.EVENT_TYPE_CUSTOM
    t0 = time.monotonic()
    for start in range(0, n, chunk):
        for i in range(start, min(n, start + chunk)):
            events.publish(custom, "bench event", {"i": str(i)})
        await asyncio.sleep(0)
    t1 = time.monotonic()
    events.publish(custom, "bench end", {"end": "1"})
    return {"n": n, "t0": t0, "t1": t1, "watchers": len(events.subscribers)}


async def main(argv: list[str]) -> None:
    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr)
    app = AgentApp(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        await app.wait_ready()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not stop.is_set():
            line_task = asyncio.ensure_future(reader.readline())
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({line_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            if line_task not in done:
                line_task.cancel()
                break
            words = line_task.result().decode().split()
            if not words or words[0] == "quit":
                break
            if words[0] == "publish":
                result = await publish(app, int(words[1]), int(words[2]))
                sys.stdout.write(json.dumps(result) + "\n")
                sys.stdout.flush()
    finally:
        await app.stop(grace=1.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
