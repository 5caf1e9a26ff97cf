from routed.cli import main

raise SystemExit(main())
