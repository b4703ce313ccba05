"""The `kdrun` command (and `python -m kdrun`). Ctrl-C while Python loads the libraries (torch,
torchvision, numpy: seconds on a busy machine) ends the process at once with one line: a
KeyboardInterrupt raised in the middle of an import can leave a half-imported module behind (numpy's
lazy submodules then fail with a RecursionError and a traceback, not the interrupt). Once they are
loaded, Ctrl-C is Python's KeyboardInterrupt again, which kdrun.cli turns into one line, and during
training kdrun.run.stop_on_signals saves the last epoch."""
import os
import signal
import sys


def _interrupted_while_loading(signum, frame) -> None:
    os.write(2, b"kdrun: interrupted\n")
    os._exit(1)  # nothing to save yet; an exception here could itself land inside an import


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    from kdrun.cli import main as cli_main

    if not {"--help", "-h", "--version"} & set(sys.argv[1:]):
        import kdrun.data  # noqa: F401  (what every run imports: torchvision, numpy)
        import kdrun.run  # noqa: F401
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli_main()


if __name__ == "__main__":
    main()
