"""``python -m tutti.launch -n 4 script.py ARGS``: start 4 ranks of a script with this
interpreter (as torchrun does), or of any program (``python -m tutti.launch -n 4 PROGRAM
ARGS``; a ``--`` before it is allowed, not required). The options and behaviour are those of
``tutti launch`` (``--master-port``, ``--timeout``, ``--bind-to``, ``--no-prefix``, ...): it
is the same launcher, compiled into the extension, running in this process."""

import sys

from . import _tutti


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    return _tutti.launch(argv, sys.executable)


if __name__ == "__main__":
    sys.exit(main())
