import sys

from lmstack.tokenizer.cli import main

sys.exit(main())
