"""`python -m daemon ...` is the same as the `drainpool` command."""

from daemon.cli import main

main()
