import sys

from runtime.executor.main import main

sys.exit(main())
