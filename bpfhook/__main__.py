"""`python -m bpfhook` runs the command line."""
import sys

from bpfhook.cli import main

sys.exit(main())
