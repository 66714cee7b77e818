import os
import sys

from neftc.cli.main import main

code = main()
world = os.environ.get("WORLD_SIZE", "1")
if world.isdigit() and int(world) > 1:
    # One process of a torch.distributed group (torchrun, --workers): its work is done, its
    # output flushed and its process group destroyed. Leave without the interpreter's teardown,
    # where a backend thread still being joined can abort the process (SIGABRT, "terminate
    # called without an active exception") and turn a finished run into a failed one.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
