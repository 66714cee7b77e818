import sys

from neftc.cli import main

sys.exit(main())
