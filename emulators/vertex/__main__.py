import sys

from emulators.vertex.server import main

sys.exit(main())
