"""What flowcli's training loops (train, adapt) share about their DataLoader workers: what a worker sets up when it
starts, and how the main process holds an interrupt until a batch is received or a step is whole."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from flowcli.errors import FlowcliError


def stop_quietly_on_sigterm(worker_id: int) -> None:
    """A data worker ends quietly on a SIGTERM, as on a Ctrl-C. torch's workers die of a SIGTERM sent to the
    whole job (`timeout`, `kill -- -PGID`, systemd, Slurm), and the main process then failed with a "DataLoader
    worker is killed by signal" traceback instead of saving its state; it stops on that SIGTERM too."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # KeyboardInterrupt, which torch's worker loop ends on


def start_data_worker(worker_id: int) -> None:
    """A Ctrl-C is the main process's to handle, though a terminal sends it to every process of the job: a worker
    that ended on it could no longer pass on the batch the main process was receiving (see `receiving_batch`). The
    main process shuts its workers down once it has stopped."""
    stop_quietly_on_sigterm(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def interrupt_deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), *, impatient: bool = False):
    """Hold a Ctrl-C (SIGINT) or a SIGTERM (those of `signums`) until the block is done, then deliver it: the
    update of the weights, the optimiser, the schedule and the step count (or a save of them) is never left half
    done, so the state saved on an interrupt is always that of a whole step. `impatient`: a second signal of the
    same kind is delivered at once. Outside the main thread the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}

    def hold(signum, frame):
        if impatient and signum in received:
            raise KeyboardInterrupt
        received.append(signum)

    try:
        for signum in signums:
            previous[signum] = signal.signal(signum, hold)
    except ValueError:  # not the main interpreter
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(received):
        handler = previous[signum]
        if callable(handler):  # Python's SIGINT handler raises KeyboardInterrupt; flowcli's SIGTERM one too
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)  # the default of SIGTERM: end the process, now that the step is whole


@contextlib.contextmanager
def receiving_batch(workers: int):
    """Around `next(batches)` of a DataLoader with `workers` (started with `start_data_worker`). A worker passes a
    batch's tensors over a socket (the file descriptors of their shared memory), which a Ctrl-C in the middle of
    receiving them cut: the worker printed a traceback from multiprocessing's resource_sharer. So a Ctrl-C waits for
    the batch (a second one does not), and the workers ignore it. Not a SIGTERM: a job's stop ends the workers too
    (stop_quietly_on_sigterm), and the batch would never come.

    The caller keeps the iterator in a variable that it deletes once it stops (`finally: del batches`): the
    traceback of the interrupt holds the caller's variables, and the workers would otherwise stay up until exit,
    after the "interrupted" message.

    A flowcli error a worker raised (a dataset item that cannot be read) comes out as its one line: torch passes it
    on as the same type with the message "Caught InputError in DataLoader worker process 0. Original Traceback
    (...)", the worker's traceback, whose last line is "flowcli.errors.InputError: MESSAGE"."""
    with interrupt_deferred((signal.SIGINT,), impatient=True) if workers else contextlib.nullcontext():
        try:
            yield
        except FlowcliError as error:
            text = str(error)
            if not (text.startswith("Caught ") and "Original Traceback" in text):
                raise
            last = text.rstrip().splitlines()[-1]
            raise type(error)(last.partition(": ")[2] or last) from None
