"""`python -m tests.training.trainer.crash_main STEP TIER [ARGS...]`: a tier's training command that
SIGKILLs itself once the optimiser has taken STEP steps.

The resume test's fault injection: the test injects it as a Trainer step hook, so the
production loop carries no test-only code and reads no environment variable on every step.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from training.trainer.run import main


def kill_at(step: int) -> Callable[[int], None]:
    def hook(done: int) -> None:
        if done >= step:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    at, tier, *argv = sys.argv[1:]
    sys.exit(main(tier, argv, step_hooks=[kill_at(int(at))]))
