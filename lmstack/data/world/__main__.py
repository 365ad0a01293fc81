from lmstack.data.world.cli import main

raise SystemExit(main())
