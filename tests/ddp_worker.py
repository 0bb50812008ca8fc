"""A torchrun worker for tests/test_distributed.py: vaefusion-train-ddp, except that rank
``KILL_RANK`` kills itself (SIGKILL, no clean-up) after its first epoch."""

from __future__ import annotations

import os
import signal
import sys

from vaefusion.cli.train_ddp import main

KILL_RANK = 1


def die(stats) -> None:
    if int(os.environ["RANK"]) == KILL_RANK:
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], on_epoch_end=die))
