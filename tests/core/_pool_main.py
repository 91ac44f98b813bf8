"""Run as `python -m tests.core._pool_main METHOD`: a pool whose initializer, task and the
classes it sends live in `__main__`, the way `python -m core.screening` uses its pool."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from core.workers import worker_pool


@dataclass(frozen=True)
class Job:
    n: int


@dataclass(frozen=True)
class Done:
    n: int
    tag: str
    pid: int


_TAG: list[str] = []


def _init(tag: str) -> None:
    _TAG.append(tag)


def _square(job: Job) -> Done:
    return Done(job.n * job.n, _TAG[-1], os.getpid())


def main(method: str) -> int:
    with worker_pool(2, _init, ("ready",), method) as pool:
        out = [pool.apply_async(_square, (Job(i),)).get(timeout=60) for i in range(4)]
        out += pool.map(_square, [Job(i) for i in range(4, 6)])
    assert [d.n for d in out] == [i * i for i in range(6)], out
    assert all(d.tag == "ready" and d.pid != os.getpid() for d in out), out
    print(f"ok {method} {type(out[0]).__module__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
