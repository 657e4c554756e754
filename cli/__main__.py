import sys

from cemsplit.cli.main import main

sys.exit(main())
