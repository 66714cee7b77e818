import sys

from neftc.cli.main import main

sys.exit(main())
