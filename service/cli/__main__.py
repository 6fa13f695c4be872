"""`python -m dptrain.cli ...` is the same as `dptrain ...`."""
import sys

from .main import main

sys.exit(main())
