import sys

from memecap.cli import main

sys.exit(main())
