"""Exit codes that the systemd unit (RestartPreventExitStatus=78) and README repeat."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # clean stop: every job finished, was interrupted or cancelled, and released
    ABANDONED = 1  # a task had to be abandoned, or a second signal forced the stop
    FAILURE = 1  # any other failure of a command (the same number: the README's table)
    USAGE = 2  # bad command line
    CONFIG = 78  # EX_CONFIG (sysexits.h): the config is invalid at start-up
