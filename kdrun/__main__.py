import sys

try:  # Ctrl-C while Python imports kdrun: one line, not a traceback
    from kdrun.cli import main
except KeyboardInterrupt:
    sys.exit("kdrun: interrupted")

main()
