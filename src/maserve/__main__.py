import sys

from maserve.cli import main

sys.exit(main())
