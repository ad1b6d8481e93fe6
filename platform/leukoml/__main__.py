import sys

from leukoml.cli import main

sys.exit(main())
