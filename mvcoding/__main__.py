from mvcoding.cli import main

raise SystemExit(main())
