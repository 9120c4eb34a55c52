"""What every DataLoader worker of flowcli's training loops (train, adapt) sets up when it starts."""

from __future__ import annotations

import signal


def stop_quietly_on_sigterm(worker_id: int) -> None:
    """A data worker ends quietly on a SIGTERM, as on a Ctrl-C. torch's workers die of a SIGTERM sent to the
    whole job (`timeout`, `kill -- -PGID`, systemd, Slurm), and the main process then failed with a "DataLoader
    worker is killed by signal" traceback instead of saving its state; it stops on that SIGTERM too."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # KeyboardInterrupt, which torch's worker loop ends on
