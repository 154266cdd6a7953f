"""Exit codes that the systemd unit (RestartPreventExitStatus=78) and README repeat."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # clean stop: every job finished, was interrupted or cancelled, and released
    ABANDONED = 1  # a task had to be abandoned, or a second signal forced the stop
    FAILURE = 1  # any other failure of a command (the same number: the README's table)
    USAGE = 2  # bad command line
    # `drainpool job wait` (issue 18): how the job ended, so a shell script can branch on it
    # without parsing output. 0 is a completed job; 1 an unknown id or an unreachable queue.
    JOB_DEAD = 3  # the job is dead: it failed for good (its last error on stderr)
    JOB_CANCELLED = 4  # the job was cancelled
    JOB_TIMED_OUT = 5  # --timeout passed while the job was still waiting, delayed or running
    CONFIG = 78  # EX_CONFIG (sysexits.h): the config is invalid at start-up
