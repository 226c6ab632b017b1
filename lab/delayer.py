"""NFQUEUE packet delayer: the lab's stand-in for `tc qdisc ... netem` on kernels built
without the netem qdisc.

Run inside a host's network namespace (it is started by lab.net.Network.set_latency as
`ip netns exec NS python3 /path/to/lab/delayer.py --queue N --delay-ms 50`), next to an
nftables rule `oifname "eth0" queue num N bypass` in that namespace. Every packet handed
to the queue is held for --delay-ms milliseconds and then accepted (or dropped with
probability --loss-pct/100). Packets leave in arrival order (the delay is constant, so a
FIFO is exact). If this process dies, `bypass` lets packets through undelayed.

Standalone on purpose (no `lab` imports), so it runs from any working directory.
Needs the PyPI package NetfilterQueue (which needs Debian's libnetfilter-queue-dev and
gcc to build). The main loop is bounded by --max-runtime seconds (default 12 h) and
ends on SIGTERM/SIGINT, releasing every held packet before exit.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import select
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queue", type=int, required=True, help="NFQUEUE number to bind")
    ap.add_argument("--delay-ms", type=float, required=True, help="hold time per packet")
    ap.add_argument("--loss-pct", type=float, default=0.0, help="drop this %% of packets")
    ap.add_argument("--max-len", type=int, default=8192, help="kernel queue length")
    ap.add_argument("--max-runtime", type=float, default=12 * 3600.0,
                    help="exit after this many seconds (bounded loop)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)

    from netfilterqueue import COPY_META, NetfilterQueue  # imported late: clear error

    delay = max(args.delay_ms, 0.0) / 1000.0
    loss = min(max(args.loss_pct, 0.0), 100.0) / 100.0
    rng = random.Random(args.seed)
    held: collections.deque = collections.deque()
    stats = {"queued": 0, "accepted": 0, "dropped": 0}
    stop = False

    def on_packet(pkt) -> None:  # called from nfq.run()
        if loss and rng.random() < loss:
            pkt.drop()
            stats["dropped"] += 1
            return
        held.append((time.monotonic() + delay, pkt))
        stats["queued"] += 1

    def on_signal(_s, _f) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # wake select() at once on a signal (PEP 475 would otherwise resume the wait)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    nfq = NetfilterQueue()
    nfq.bind(args.queue, on_packet, max_len=args.max_len, mode=COPY_META)
    fd = nfq.get_fd()
    print(f"delayer: queue {args.queue} bound, delay {args.delay_ms} ms, "
          f"loss {args.loss_pct}%", flush=True)
    end = time.monotonic() + args.max_runtime
    try:
        while not stop:
            now = time.monotonic()
            if now >= end:
                print("delayer: max runtime reached", flush=True)
                break
            timeout = min(held[0][0] - now, 1.0) if held else 1.0
            try:
                ready, _, _ = select.select([fd, wake_r], [], [], max(timeout, 0.0))
            except InterruptedError:
                continue
            if wake_r in ready:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
            if fd in ready:
                nfq.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                held.popleft()[1].accept()
                stats["accepted"] += 1
    finally:
        while held:  # release everything still held
            try:
                held.popleft()[1].accept()
                stats["accepted"] += 1
            except Exception:  # queue may already be gone
                pass
        nfq.unbind()
        print(f"delayer: exit {stats}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
