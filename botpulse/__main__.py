import sys

from botpulse.cli import main

sys.exit(main())
