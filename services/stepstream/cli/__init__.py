"""``stepstream``: run the engine's services, a local broker, and talk to the api.

stepstream dev [--example]          the local stack in one process (starts a local Kafka)
stepstream projector|scheduler|executor|api
stepstream kafka start|stop|status  the local single-node Kafka
stepstream topics create            create the engine's topics
stepstream token new NAME --roles read,write,operate   an api token, and the line that configures it
stepstream trigger WORKFLOW [--payload JSON] [--run-id ID] [--delay 10s|--not-before TIME] [--watch|--wait] …
                   [--flow-key K [--rate N] [--period 1m] [--parallelism N]]
stepstream runs list|get|steps|history …
stepstream notify EVENT_ID [--data JSON]       stepstream waiters EVENT_ID
stepstream cancel RUN_ID | --workflow W | --label L | --created-before T | --all
stepstream deadletter list|resume|restart|delete [RUN_ID]
stepstream flow [KEY]                          flow-control keys: queued, in flight, limits
stepstream state|export|show|replay …          a run's history put to use (cli/history.py)

Exit codes: 0 done; 1 a watched run failed or was cancelled, or watching gave up; 2 the command was
wrong, the api refused it, or the api could not be reached.

Watching and waiting do not poll: ``--watch`` and ``--follow`` read the api's history stream
(server-sent events), ``--wait`` asks the api to answer when the run has ended (``?wait=``).

Lists of runs, dead letters, steps and flow-control keys print as tables under a header row: on a
terminal in colour, into a pipe or a file as plain text, one line a row (``| grep``, ``| head``).

The commands live by what they are for: ``local`` runs the engine here, ``runs`` starts and reads
runs, ``control`` acts on them, ``history`` puts a run's history to use (state at a point, export,
replay); ``output`` is how they all print.
"""

from __future__ import annotations

import argparse
import os
import sys

from stepstream.cli import control, history, local, runs


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="stepstream", description="A durable workflow engine on Apache Kafka.")
    commands = root.add_subparsers(dest="command", required=True)
    local.add_commands(commands)
    runs.add_commands(commands)
    control.add_commands(commands)
    history.add_commands(commands)
    return root


def main(argv: list[str] | None = None) -> None:
    try:
        args = parser().parse_args(argv)
        args.handler(args)
    except BrokenPipeError:
        # The reader stopped reading (`stepstream runs history RUN | head -5`): not an error of ours.
        # stdout goes to /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
