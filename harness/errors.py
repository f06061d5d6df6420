"""Errors a user can cause, and stops a user asks for.

The CLI prints a ``UserError`` as one line and exits with code 2; a stop (Ctrl-C, or SIGTERM
turned into ``Terminated``) as one line with code 130 or 143.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with something the user gave (a path, a file, a name, a number).

    The message is one sentence that names the input and says how to fix it.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's cancel or time limit, `kill`) turned into the same orderly
    stop as Ctrl-C: one line instead of a silent death."""


_stop: KeyboardInterrupt | None = None  # the stop asked for in this process, once a handler saw one


def on_sigterm(signum, frame) -> None:
    global _stop
    _stop = Terminated()
    raise _stop


def on_sigint(signum, frame) -> None:
    """Ctrl-C as Python raises it, remembered like SIGTERM."""
    global _stop
    _stop = KeyboardInterrupt()
    raise _stop


def raise_if_stopping() -> None:
    """Raise the stop asked for, if one was: called before a finished unit is saved, so that
    a stop swallowed by some ``except Exception`` (a plugin's, a library's) can never leave
    a half-computed result behind as a finished one."""
    if _stop is not None:
        raise _stop


def interruption(err: BaseException) -> KeyboardInterrupt | None:
    """The stop behind ``err``: ``err`` itself if it is one, or the Ctrl-C/SIGTERM it was
    raised while handling. A stop lands between any two bytecodes, also inside a library's
    clean-up, and the library's own error can replace it on the way out (torch's vmap,
    which transformers uses to build attention masks, fails an internal assert when the
    stop lands between entering and leaving it). Such an error is still a stop: code
    that skips a failed part must re-raise it, and the CLI reports it as the stop."""
    todo, seen = [err], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]
    return None
