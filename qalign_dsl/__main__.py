import sys

from qalign_dsl.cli import main

sys.exit(main())
